"""SessionState: the observable state of a session; setters notify only on real changes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lkbridge.log import get_logger, note_livekit_room
from lkbridge.messages import ReceivedMessage
from lkbridge.session.agent import Agent
from lkbridge.session.events import (
    AgentChanged,
    ConnectionState,
    ConnectionStateChanged,
    ErrorChanged,
    EventHub,
    EventStream,
    HistoryRestored,
    Listener,
    MessageReceived,
    SessionError,
    SessionEvent,
)
from lkbridge.session.history import MessageHistory


class SessionState:
    """Connection state, agent, error and history, with events/listeners for every change.

    Session builds on this; it is public for type hints and for tests of the store logic.
    """

    def __init__(self, *, name: str | None = None, history_limit: int | None = None) -> None:
        self._name = name
        self._connection_state = ConnectionState.DISCONNECTED
        self._agent = Agent.disconnected()
        self._error: SessionError | None = None
        self._history = MessageHistory(history_limit)
        self._hub = EventHub()

    @property
    def _log(self) -> Any:
        # Bound per use, so a logging configuration made after construction still applies.
        logger = get_logger("lkbridge.session.core")
        return logger.bind(session=self._name) if self._name else logger

    def _state_changed(self) -> None:
        """Hook: called after the connection state or the agent changed."""

    @property
    def connection_state(self) -> ConnectionState:
        return self._connection_state

    @property
    def is_connected(self) -> bool:
        """True while connecting, connected or reconnecting."""
        return self._connection_state is not ConnectionState.DISCONNECTED

    @property
    def agent(self) -> Agent:
        return self._agent

    @property
    def error(self) -> SessionError | None:
        return self._error

    @property
    def messages(self) -> list[ReceivedMessage]:
        """The history in first-arrival order (a copy)."""
        return self._history.snapshot()

    def get_message_history(self) -> list[ReceivedMessage]:
        """A snapshot of the history in store order."""
        return self._history.snapshot()

    # ------------------------------------------------------------------ observation

    def events(self, *, maxsize: int = 10_000) -> EventStream:
        """An async iterator of every change from now on; ends when the session is closed."""
        return self._hub.stream(maxsize)

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(event)` synchronously on every change (exceptions are logged)."""
        self._hub.add_listener(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._hub.remove_listener(listener)

    def _emit(self, event: SessionEvent) -> None:
        self._hub.emit(event)

    def _set_connection_state(self, state: ConnectionState) -> None:
        previous = self._connection_state
        if state is previous:
            return
        self._connection_state = state
        if self._name:
            note_livekit_room(self._name, state is not ConnectionState.DISCONNECTED)
        self._log.info(
            "session_connection_state_changed", state=state.value, previous=previous.value
        )
        self._emit(ConnectionStateChanged(state=state, previous=previous))
        self._state_changed()

    def _set_agent(self, agent: Agent) -> None:
        previous = self._agent
        if agent == previous:
            return
        self._agent = agent
        self._log.info(
            "session_agent_changed",
            lifecycle=agent.lifecycle.value,
            state=agent.state.value if agent.state else None,
            identity=agent.identity,
            failure=agent.failure.value if agent.failure else None,
        )
        self._emit(AgentChanged(agent=agent, previous=previous))
        self._state_changed()

    def _set_error(self, error: SessionError | None) -> None:
        previous = self._error
        if error == previous:
            return
        self._error = error
        if error is not None:
            self._log.warning("session_error_set", kind=error.kind.value, error=error.message)
        self._emit(ErrorChanged(error=error, previous=previous))

    def dismiss_error(self) -> None:
        """Clear the last error."""
        self._set_error(None)

    # ------------------------------------------------------------------ messages

    def _store(self, message: ReceivedMessage) -> None:
        changed, previous = self._history.put(message)
        if changed:
            self._emit(
                MessageReceived(message=message, inserted=previous is None, previous=previous)
            )

    def restore_message_history(self, messages: Iterable[ReceivedMessage]) -> None:
        """Replace the history: last value wins per id, then stable-sorted by timestamp.

        Never raises: items that are neither messages nor their to_dict() form are skipped.
        Later updates of a restored id (e.g. a transcript still streaming) update it in place.
        """
        try:
            ordered, skipped = self._history.restore(list(messages))
        except Exception as exc:
            self._log.error("message_history_restore_failed", error=repr(exc))
            return
        self._log.info("message_history_restored", count=len(ordered), skipped=skipped)
        self._emit(HistoryRestored(messages=tuple(ordered)))
