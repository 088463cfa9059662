"""MQTT, the only paho user: the asyncio client, the shared connection, and the MQTT transport."""
