"""A self-contained local stack (LiveKit server, MQTT broker, scripted agent) for tests and the demo."""
