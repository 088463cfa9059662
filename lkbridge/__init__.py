"""lkbridge: LiveKit agent sessions on a message bus."""

__version__ = "0.1.0"

__all__ = ["__version__"]
