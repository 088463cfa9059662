"""What the demo agent answers: the time and date, arithmetic, counting, reversing, repeating."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime

HELP = (
    "I am the lkbridge demo agent. Try: 'what time is it', 'what day is it', "
    "'what is 2 + 3 * 4', 'count to 5', 'count the words in a b c', "
    "'reverse these words', 'repeat after me: hi'. Anything else I simply echo."
)
MAX_COUNT = 100  # "count to N" answers up to this many numbers
MAX_EXPRESSION = 200  # characters of arithmetic the parser looks at
MAX_NESTING = 20  # parentheses deep

_WORDS = re.compile(r"[a-z']+")
# A stretch that may be arithmetic: starts with a digit, sign or "(", ends with a digit or ")".
_EXPRESSION = re.compile(r"[-+(\d.][-+*/x\u00d7\u00f7()\d.\s]*[\d)]")
_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d*)?|\.\d+)|([-+*/x\u00d7\u00f7()]))")
_COUNT_TO = re.compile(r"count\s+(?:from\s+(-?\d+)\s+)?(?:up\s+)?to\s+(-?\d+)\b", re.IGNORECASE)
_SYMBOLS = {"x": "*", "\u00d7": "*", "\u00f7": "/"}


class _NotArithmetic(ValueError):
    """The text is not an expression this parser understands."""


class _Parser:
    """Recursive descent over + - * / and parentheses, with the usual precedence. Never eval."""

    def __init__(self, text: str) -> None:
        self.tokens: list[str] = []
        pos = 0
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if match is None:
                if text[pos:].strip():
                    raise _NotArithmetic(text)
                break
            self.tokens.append(match[1] or _SYMBOLS.get(match[2], match[2]))
            pos = match.end()
        self.pos = 0
        self.depth = 0

    def parse(self) -> float:
        value = self._sum()
        if self.pos != len(self.tokens):
            raise _NotArithmetic("trailing input")
        return value

    def _peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take(self) -> str:
        token = self._peek()
        if token is None:
            raise _NotArithmetic("unexpected end")
        self.pos += 1
        return token

    def _sum(self) -> float:
        value = self._product()
        while self._peek() in ("+", "-"):
            op = self._take()
            right = self._product()
            value = value + right if op == "+" else value - right
        return value

    def _product(self) -> float:
        value = self._factor()
        while self._peek() in ("*", "/"):
            op = self._take()
            right = self._factor()
            if op == "/":
                if right == 0:
                    raise ZeroDivisionError
                value = value / right
            else:
                value = value * right
        return value

    def _factor(self) -> float:
        token = self._take()
        if token in ("+", "-"):
            value = self._factor()
            return value if token == "+" else -value
        if token == "(":
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise _NotArithmetic("nested too deeply")
            value = self._sum()
            if self._take() != ")":
                raise _NotArithmetic("unbalanced parentheses")
            self.depth -= 1
            return value
        if token[0].isdigit() or token[0] == ".":
            return float(token)
        raise _NotArithmetic(f"unexpected {token!r}")


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


def _spaced(expression: str) -> str:
    """The expression as the user wrote it, with one space around each binary operator."""
    tokens = _Parser(expression).tokens
    out: list[str] = []
    for index, token in enumerate(tokens):
        previous = tokens[index - 1] if index else None
        unary = token in "+-" and (previous is None or previous in "+-*/(")
        if token in "+-*/" and not unary:
            out.append(f" {token} ")
        else:
            out.append(token)
    return "".join(out)


def calculate(text: str) -> str | None:
    """'2 + 3 * 4 = 14' for the first arithmetic in text, or None when there is none."""
    for match in _EXPRESSION.finditer(text[:MAX_EXPRESSION]):
        expression = match[0].strip()
        if not re.search(r"\d\s*[-+*/x\u00d7\u00f7(]|\)", expression) or not re.search(
            r"[-+*/x\u00d7\u00f7]", expression.lstrip("-+")
        ):
            continue  # a lone number, not a calculation
        try:
            value = _Parser(expression).parse()
        except ZeroDivisionError:
            return "I cannot divide by zero."
        except (_NotArithmetic, OverflowError):
            continue
        return f"{_spaced(expression)} = {_number(value)}"
    return None


def count_to(text: str) -> str | None:
    """'1, 2, 3' for "count to 3" (or "count from 2 to 5"), or None."""
    match = _COUNT_TO.search(text)
    if match is None:
        return None
    if max(len(match[1] or ""), len(match[2])) > 12:  # int() refuses 4300+ digits (ValueError)
        return f"I count at most {MAX_COUNT} numbers at a time."
    start, end = int(match[1] or 1), int(match[2])
    step = 1 if end >= start else -1
    if abs(end - start) + 1 > MAX_COUNT:
        return f"I count at most {MAX_COUNT} numbers at a time."
    return ", ".join(str(n) for n in range(start, end + step, step))


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
        return " ".join(reversed(rest.split()))
    if (counted := count_to(text)) is not None:
        return counted
    if (rest := _after(text, "count the words in", "count words in", "count")) is not None:
        counted_words = rest.split()
        n = len(counted_words)
        return f"That is {n} word{'s' if n != 1 else ''}."
    if (result := calculate(text)) is not None:
        return result
    if "time" in words:
        return f"It is {now():%H:%M:%S} here."
    if words & {"date", "day", "today"}:
        return f"Today is {now():%A, %d %B %Y}."
    if words & {"hello", "hi", "hey"}:
        return "Hello! I am the lkbridge demo agent. Ask me the time, or say 'help'."
    return f"You said: {text}"
