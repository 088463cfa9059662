"""What the demo agent answers: the time, counting, reversing, repeating, a little arithmetic."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime

HELP = (
    "I am the lkbridge demo agent. Try: 'what time is it', 'what day is it', "
    "'count one two three', 'reverse hello world', 'repeat after me: hi', "
    "'what is 6 * 7'. Anything else I simply echo."
)
_ARITHMETIC = re.compile(r"(-?\d+(?:\.\d+)?)\s*([-+*/x\u00d7\u00f7])\s*(-?\d+(?:\.\d+)?)")
_WORDS = re.compile(r"[a-z']+")


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.6g}"


def _calculate(a: float, op: str, b: float) -> str:
    if op in "/\u00f7":
        if b == 0:
            return "I cannot divide by zero."
        return f"{_number(a)} / {_number(b)} = {_number(a / b)}"
    result = {"+": a + b, "-": a - b}.get(op, a * b)
    symbol = "*" if op in "x\u00d7*" else op
    return f"{_number(a)} {symbol} {_number(b)} = {_number(result)}"


def _after(text: str, *prefixes: str) -> str | None:
    """What follows the first of prefixes (as whole words) at the start of text, or None."""
    for prefix in prefixes:
        if match := re.match(rf"{prefix}\b[\s:,]*(.*)$", text, re.IGNORECASE):
            return match[1]
    return None


def demo_reply(text: str, now: Callable[[], datetime] = datetime.now) -> str:
    """The demo agent's answer to one chat message."""
    text = " ".join(text.split())
    words = set(_WORDS.findall(text.lower()))
    if not text:
        return "I did not catch that. Say 'help' to see what I can do."
    if words & {"help", "commands"} or text == "?":
        return HELP
    if (rest := _after(text, "repeat after me", "repeat", "say")) is not None and rest:
        return rest
    if (rest := _after(text, "reverse")) is not None and rest:
        return rest[::-1]
    if (rest := _after(text, "count the words in", "count words in", "count")) is not None:
        counted = rest or text
        count = len(counted.split())
        return f"That is {count} word{'s' if count != 1 else ''} and {len(counted)} characters."
    if match := _ARITHMETIC.search(text):
        return _calculate(float(match[1]), match[2], float(match[3]))
    if "time" in words:
        return f"It is {now():%H:%M:%S} here."
    if words & {"date", "day", "today"}:
        return f"Today is {now():%A, %d %B %Y}."
    if words & {"hello", "hi", "hey"}:
        return "Hello! I am the lkbridge demo agent. Ask me the time, or say 'help'."
    return f"You said: {text}"
