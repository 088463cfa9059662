"""Transcript merge rules (spec §4.4) with the reference vectors of the Swift and Flutter SDKs."""

from __future__ import annotations

from dataclasses import replace

import pytest

from lkbridge.messages import MessageType, ReceivedMessage
from lkbridge.transports.transcription import (
    FINAL_ATTRIBUTE,
    SEGMENT_ID_ATTRIBUTE,
    StreamHeader,
    TranscriptMerger,
    parse_final,
)

T0 = 1_767_323_045_000  # ms since epoch, a stream header time


def header(
    stream_id: str,
    *,
    sender: str = "agent-1",
    segment: str | None = "test-segment",
    final: str | None = "false",
    ts: int = T0,
) -> StreamHeader:
    attributes: dict[str, str] = {}
    if segment is not None:
        attributes[SEGMENT_ID_ATTRIBUTE] = segment
    if final is not None:
        attributes[FINAL_ATTRIBUTE] = final
    return StreamHeader(stream_id=stream_id, sender=sender, timestamp_ms=ts, attributes=attributes)


def trailer(h: StreamHeader, final: str) -> StreamHeader:
    """The header as rtc shows it after the stream ended: trailer attributes merged in."""
    return replace(h, attributes={**h.attributes, FINAL_ATTRIBUTE: final})


class Collector:
    """Applies stream events to a merger and keeps every update plus the keyed store."""

    def __init__(self) -> None:
        self.merger = TranscriptMerger()
        self.updates: list[ReceivedMessage] = []
        self.store: dict[str, ReceivedMessage] = {}

    def _add(self, message: ReceivedMessage | None) -> None:
        if message is not None:
            self.updates.append(message)
            self.store[message.id] = message

    def chunk(self, h: StreamHeader, text: str, *, local: str = "local") -> None:
        self._add(self.merger.chunk(h, text, is_local=h.sender == local))

    def end(self, h: StreamHeader) -> None:
        self._add(self.merger.end(h))

    def send_text(self, h: StreamHeader, text: str) -> None:
        """Like `local_participant.send_text`: one chunk, then the stream closes."""
        self.chunk(h, text)
        self.end(h)


def assert_vector(c: Collector, contents: list[str], finals: list[bool]) -> None:
    assert [m.text for m in c.updates] == contents
    assert [m.final for m in c.updates] == finals
    assert {m.id for m in c.updates} == {"test-segment"}
    assert {m.timestamp for m in c.updates} == {c.updates[0].timestamp}
    assert list(c.store) == ["test-segment"]
    assert c.store["test-segment"].text == contents[-1] and c.store["test-segment"].final


def test_swift_updates_same_stream_id_across_streams() -> None:
    c = Collector()
    chunks = ["Hey", " there!", " What's up?"]
    for i, text in enumerate(chunks):
        final = "true" if i == len(chunks) - 1 else "false"
        c.send_text(header("same-stream", final=final, ts=T0 + i * 10), text)
    assert_vector(
        c,
        ["Hey", "Hey", "Hey there!", "Hey there!", "Hey there! What's up?"],
        [False, True, False, True, True],
    )


def test_swift_replace_same_segment_different_streams() -> None:
    c = Collector()
    chunks = ["Hey", "Hey there!", "Hey there! What's up?"]
    for i, text in enumerate(chunks):
        final = "true" if i == len(chunks) - 1 else "false"
        c.send_text(header(f"stream-{i}", final=final, ts=T0 + i * 10), text)
    assert_vector(
        c,
        ["Hey", "Hey", "Hey there!", "Hey there!", "Hey there! What's up?"],
        [False, True, False, True, True],
    )


def test_swift_stream_close_finalizes_one_incremental_stream() -> None:
    c = Collector()
    h = header("s1")
    for text in ["Hey", " there!", " What's up?"]:
        c.chunk(h, text)
    c.end(h)  # header said "false" and no trailer: finality comes from the close
    assert_vector(
        c,
        ["Hey", "Hey there!", "Hey there! What's up?", "Hey there! What's up?"],
        [False, False, False, True],
    )


def test_swift_attribute_based_is_final_has_no_duplicate_at_close() -> None:
    c = Collector()
    c.send_text(header("s1", final="true"), "Hello!")
    assert_vector(c, ["Hello!"], [True])


def test_agent_delta_stream_with_final_trailer() -> None:
    c = Collector()
    h = header("s1", segment="SG_a")
    for text in ["You ", "said: ", "hi"]:
        c.chunk(h, text)
    c.end(trailer(h, "true"))
    assert [m.text for m in c.updates] == ["You ", "You said: ", "You said: hi", "You said: hi"]
    assert [m.final for m in c.updates] == [False, False, False, True]
    assert c.merger.partial_count == 0


def test_flutter_aggregates_agent_and_user_transcripts_with_segment_replacement() -> None:
    c = Collector()
    c.chunk(header("s1", segment="seg-1", final="false", sender="agent-1"), "Hello")
    c.chunk(header("s2", segment="seg-1", final="true", sender="agent-1"), "Hello world")
    c.chunk(header("s3", segment="seg-2", final="true", sender="local"), "User said hi")
    assert [(m.type, m.text) for m in c.updates] == [
        (MessageType.AGENT_TRANSCRIPT, "Hello"),
        (MessageType.AGENT_TRANSCRIPT, "Hello world"),
        (MessageType.USER_TRANSCRIPT, "User said hi"),
    ]
    assert [m.id for m in c.updates] == ["seg-1", "seg-1", "seg-2"]


def test_flutter_cleans_up_previous_partials_and_falls_back_to_stream_id() -> None:
    c = Collector()
    c.chunk(header("a1", segment="seg-A", sender="agent-A"), "Partial A")
    c.chunk(header("a2", segment="seg-B", final="true", sender="agent-A"), "Final B")
    c.chunk(header("b1", segment=None, final="true", sender="agent-B"), "No segment id")
    assert [m.id for m in c.updates] == ["seg-A", "seg-B", "b1"]
    assert c.store["seg-B"].text == "Final B"
    assert c.store["b1"].text == "No segment id"
    assert c.merger.partial_count == 0  # seg-A dropped when agent-A started seg-B


def test_user_interim_streams_replace_text_and_keep_first_timestamp_and_id() -> None:
    c = Collector()
    texts = ["hel", "hello", "hello there"]
    for i, text in enumerate(texts):
        final = "true" if i == len(texts) - 1 else "false"
        c.send_text(header(f"u{i}", segment="SG_u", sender="local", final=final, ts=T0 + i), text)
    message = c.store["SG_u"]
    assert (message.type, message.text, message.final) == (
        MessageType.USER_TRANSCRIPT,
        "hello there",
        True,
    )
    assert message.timestamp == c.updates[0].timestamp
    assert message.timestamp.timestamp() * 1000 == T0


def test_empty_chunks_emit_nothing_and_empty_streams_finalise_nothing() -> None:
    c = Collector()
    h = header("s1")
    c.chunk(h, "")
    c.end(h)
    assert c.updates == []


def test_new_segment_drops_only_the_same_senders_partials() -> None:
    c = Collector()
    c.chunk(header("a1", segment="A1", sender="agent"), "agent text")
    c.chunk(header("u1", segment="U1", sender="local"), "user text")
    c.chunk(header("a2", segment="A2", sender="agent"), "next turn")
    assert c.merger.partial_count == 2  # U1 and A2
    c.chunk(header("u1", segment="U1", sender="local"), " more")
    assert c.store["U1"].text == "user text more"


def test_stream_error_path_finalises_with_the_text_received_so_far() -> None:
    c = Collector()
    h = header("s1", segment="SG_x")
    c.chunk(h, "partial ")
    c.chunk(h, "answer")
    c.end(h)  # what the receiver does when the stream raises StreamError
    assert c.updates[-1].text == "partial answer" and c.updates[-1].final


def test_reset_forgets_partials() -> None:
    c = Collector()
    c.chunk(header("s1"), "x")
    c.merger.reset()
    assert c.merger.partial_count == 0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        (" True ", True),
        ("1", True),
        ("false", False),
        ("False", False),
        ("0", False),
        ("yes", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_final(raw: str | None, expected: bool | None) -> None:
    assert parse_final(raw) is expected
