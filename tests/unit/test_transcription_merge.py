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


# The Swift SDK's vectors, with lkbridge's finality rule: a stream's text is final only when
# the stream ends with the final flag; a close without it does not finalise (Swift's
# stream-close finalisation would mark every interim user transcript final).


def test_swift_updates_same_stream_id_across_streams() -> None:
    c = Collector()
    chunks = ["Hey", " there!", " What's up?"]
    for i, text in enumerate(chunks):
        final = "true" if i == len(chunks) - 1 else "false"
        c.send_text(header("same-stream", final=final, ts=T0 + i * 10), text)
    assert_vector(
        c,
        ["Hey", "Hey there!", "Hey there! What's up?", "Hey there! What's up?"],
        [False, False, False, True],
    )


def test_swift_replace_same_segment_different_streams() -> None:
    c = Collector()
    chunks = ["Hey", "Hey there!", "Hey there! What's up?"]
    for i, text in enumerate(chunks):
        final = "true" if i == len(chunks) - 1 else "false"
        c.send_text(header(f"stream-{i}", final=final, ts=T0 + i * 10), text)
    assert_vector(
        c,
        ["Hey", "Hey there!", "Hey there! What's up?", "Hey there! What's up?"],
        [False, False, False, True],
    )


def test_close_without_final_flag_does_not_finalise() -> None:
    c = Collector()
    h = header("s1")
    for text in ["Hey", " there!", " What's up?"]:
        c.chunk(h, text)
    c.end(h)  # header said "false" and the trailer said nothing
    assert [m.text for m in c.updates] == ["Hey", "Hey there!", "Hey there! What's up?"]
    assert [m.final for m in c.updates] == [False, False, False]
    assert c.merger.partial_count == 1  # a later stream of the segment may still continue it


# Every order in which the final flag can be seen (issue 10).


def test_final_in_trailer_appends_every_chunk_then_finalises() -> None:
    c = Collector()
    h = header("s1", segment="SG_a")
    for text in ["You ", "said: ", "hi"]:
        c.chunk(h, text)
    c.end(trailer(h, "true"))
    assert [m.text for m in c.updates] == ["You ", "You said: ", "You said: hi", "You said: hi"]
    assert [m.final for m in c.updates] == [False, False, False, True]
    assert c.merger.partial_count == 0


def test_final_at_open_still_appends_every_chunk() -> None:
    """The defect: rtc handed the stream over late, its attributes already held the trailer's
    final flag, and each chunk replaced the text ("echo", ":", " fc-4", ...)."""
    c = Collector()
    h = header("s1", segment="SG_late", final="true")
    for text in ["echo", ":", " fc-4", " two", " three"]:
        c.chunk(h, text)
    assert [m.final for m in c.updates] == [False] * 5
    c.end(h)
    assert c.store["SG_late"].text == "echo: fc-4 two three"
    assert c.store["SG_late"].final
    finals = [m for m in c.updates if m.final]
    assert [m.text for m in finals] == ["echo: fc-4 two three"]  # one final text per id


def test_final_flag_seen_mid_stream_changes_nothing_until_the_end() -> None:
    c = Collector()
    h = header("s1", segment="SG_mid")
    c.chunk(h, "one")
    c.chunk(trailer(h, "true"), " two")  # attributes flipped while chunks were still read
    c.chunk(trailer(h, "true"), " three")
    assert [m.text for m in c.updates] == ["one", "one two", "one two three"]
    assert not any(m.final for m in c.updates)
    c.end(trailer(h, "true"))
    assert c.store["SG_mid"].text == "one two three" and c.store["SG_mid"].final


def test_aborted_stream_keeps_its_text_not_final_and_drops_the_partial() -> None:
    c = Collector()
    h = header("s1", segment="SG_x")
    c.chunk(h, "partial ")
    c.chunk(h, "answer")
    c._add(c.merger.end(trailer(h, "true"), aborted=True))  # even a final flag: it was cut
    assert c.updates[-1].text == "partial answer"
    assert not c.store["SG_x"].final
    assert c.merger.partial_count == 0


def test_later_stream_of_the_same_segment_replaces_then_finalises() -> None:
    c = Collector()
    first = header("s1", segment="SG_u", sender="local")
    c.chunk(first, "hel")
    c.end(first)
    second = header("s2", segment="SG_u", sender="local", final="true", ts=T0 + 5)
    c.chunk(second, "hello")
    c.end(second)
    assert [(m.text, m.final) for m in c.updates] == [
        ("hel", False),
        ("hello", False),
        ("hello", True),
    ]
    assert c.store["SG_u"].timestamp.timestamp() * 1000 == T0  # the first stream's time


def test_later_stream_after_a_final_one_starts_the_segment_again() -> None:
    c = Collector()
    c.send_text(header("s1", segment="SG_r", final="true"), "first")
    c.send_text(header("s2", segment="SG_r", final="true"), "second")
    assert c.store["SG_r"].text == "second" and c.store["SG_r"].final


def test_trailer_of_a_replaced_stream_does_not_finalise_the_newer_text() -> None:
    c = Collector()
    old = header("s1", segment="SG_o")
    new = header("s2", segment="SG_o")
    c.chunk(old, "old")
    c.chunk(new, "new")  # the newer stream took over the segment
    c.end(trailer(old, "true"))
    assert [(m.text, m.final) for m in c.updates] == [("old", False), ("new", False)]
    c.end(trailer(new, "true"))
    assert c.store["SG_o"].text == "new" and c.store["SG_o"].final


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
    c.send_text(header("a2", segment="seg-B", final="true", sender="agent-A"), "Final B")
    c.send_text(header("b1", segment=None, final="true", sender="agent-B"), "No segment id")
    assert [m.id for m in c.updates] == ["seg-A", "seg-B", "seg-B", "b1", "b1"]
    assert c.store["seg-B"].text == "Final B" and c.store["seg-B"].final
    assert c.store["b1"].text == "No segment id" and c.store["b1"].final
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
    assert [m.final for m in c.updates] == [False, False, False, True]
    assert message.timestamp == c.updates[0].timestamp
    assert message.timestamp.timestamp() * 1000 == T0


def test_empty_chunks_emit_nothing_and_empty_streams_finalise_nothing() -> None:
    c = Collector()
    h = header("s1")
    c.chunk(h, "")
    c.end(trailer(h, "true"))
    assert c.updates == []


def test_new_segment_drops_only_the_same_senders_partials() -> None:
    c = Collector()
    c.chunk(header("a1", segment="A1", sender="agent"), "agent text")
    c.chunk(header("u1", segment="U1", sender="local"), "user text")
    c.chunk(header("a2", segment="A2", sender="agent"), "next turn")
    assert c.merger.partial_count == 2  # U1 and A2
    c.chunk(header("u1", segment="U1", sender="local"), " more")
    assert c.store["U1"].text == "user text more"


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
