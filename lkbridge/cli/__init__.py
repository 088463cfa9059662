"""The command line: argument parsing, config checks, MQTT-side clients and the chat console."""
