"""The plugin host: entry-point loading with isolation, registries, and the built-in plugins."""
