"""MQTT topic rules, one copy each: valid names and filters, base-topic prefixes, filter matching
(paho's) and filter overlap."""

from __future__ import annotations

from paho.mqtt.client import topic_matches_sub

MAX_TOPIC_BYTES = 65535


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether topic matches the filter (`+`, `#`; wildcards at the first level skip `$` topics)."""
    return topic_matches_sub(topic_filter, topic)


def filters_overlap(a: str, b: str) -> bool:
    """Whether some topic name matches both filters (a topic name is a filter without wildcards).

    The matching rule of topic_matches (paho's), extended to two filters: `+` is one level, `#`
    the parent level and every level below it, and a topic starting with `$` is not matched by
    a wildcard first level. tests/unit/test_control_plane.py checks it against paho's.
    """
    la, lb = a.split("/"), b.split("/")
    if (la[0] in ("+", "#") and lb[0].startswith("$")) or (
        lb[0] in ("+", "#") and la[0].startswith("$")
    ):
        return False
    for index in range(max(len(la), len(lb))):
        x = la[index] if index < len(la) else None
        y = lb[index] if index < len(lb) else None
        if x == "#" or y == "#":
            return True
        if x is None or y is None:
            return False
        if x != y and x != "+" and y != "+":
            return False
    return True


def topic_problem(topic: str, *, is_filter: bool) -> str | None:
    """Why topic is not a valid MQTT topic name (or filter), or None when it is."""
    what = "topic filter" if is_filter else "topic"
    if not topic or "\0" in topic or len(topic.encode()) > MAX_TOPIC_BYTES:
        return f"invalid MQTT {what} {topic!r}: empty, too long or contains NUL"
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if not is_filter and ("+" in level or "#" in level):
            return f"invalid MQTT topic {topic!r}: wildcards are only for filters"
        misplaced_hash = "#" in level and (level != "#" or i < len(levels) - 1)
        if ("+" in level and level != "+") or misplaced_hash:
            return f"invalid MQTT topic filter {topic!r}: misplaced wildcard"
    return None


def base_topic_problem(base: str) -> str | None:
    """Why base cannot prefix lkbridge's topics (base topic, discovery prefix), or None."""
    if "+" in base or "#" in base:
        return "must not contain the MQTT wildcards + or #"
    if "\0" in base:
        return "must not contain NUL characters"
    if any(level == "" for level in base.split("/")):
        return "must not have empty topic levels (a leading, trailing or double /)"
    if base.startswith("$"):
        return "must not start with $ (reserved for the broker)"
    return None
