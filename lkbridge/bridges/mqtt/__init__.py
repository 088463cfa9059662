"""The MQTT bridge: an asyncio MQTT client, topics, request router and Home Assistant discovery."""
