"""Token sources: where a session gets its server URL and participant token, and JWT claims."""
