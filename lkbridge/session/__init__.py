"""The session layer: Session, its state, events, options, outbox, agent and history."""
