"""The demo agent's answers: arithmetic with precedence (a parser, never eval), counting, words."""

from __future__ import annotations

import pytest

from devstack.demo.replies import HELP, MAX_COUNT, calculate, count_to, demo_reply


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("2 + 3 * 4", "2 + 3 * 4 = 14"),
        ("what is 2+3*4?", "2 + 3 * 4 = 14"),
        ("(2 + 3) * 4", "(2 + 3) * 4 = 20"),
        ("10 - 4 - 3", "10 - 4 - 3 = 3"),
        ("100 / 10 / 5", "100 / 10 / 5 = 2"),
        ("-3 * -2", "-3 * -2 = 6"),
        ("2 - -3", "2 - -3 = 5"),
        ("10 / 4", "10 / 4 = 2.5"),
        ("1 / 3", "1 / 3 = 0.333333"),
        ("6 x 7", "6 * 7 = 42"),
        ("6 \u00d7 7", "6 * 7 = 42"),
        ("1.5 + 1.25", "1.5 + 1.25 = 2.75"),
        ("7 / 0", "I cannot divide by zero."),
        ("(1 + 2) / (3 - 3)", "I cannot divide by zero."),
    ],
)
def test_arithmetic_follows_precedence(text: str, answer: str) -> None:
    assert demo_reply(text) == answer


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('true')",  # never evaluated: not arithmetic at all
        "2 ** 10",
        "what is 2+",
        "(2 + 3",
        "I have 3 cats",
        "(" * 50 + "1" + ")" * 50,  # nesting is bounded
    ],
)
def test_what_is_not_arithmetic_is_not_calculated(text: str) -> None:
    assert calculate(text) is None


def test_counting() -> None:
    assert demo_reply("count to 5") == "1, 2, 3, 4, 5"
    assert demo_reply("Count to 1") == "1"
    assert demo_reply("count from 3 to 1") == "3, 2, 1"
    assert demo_reply("please count up to 3") == "1, 2, 3"
    assert count_to(f"count to {MAX_COUNT + 1}") == f"I count at most {MAX_COUNT} numbers at a time."
    assert count_to("count to " + "9" * 5000) == f"I count at most {MAX_COUNT} numbers at a time."
    assert count_to(f"count from -{'9' * 5000} to 1") == f"I count at most {MAX_COUNT} numbers at a time."
    assert demo_reply("count the words in a b c") == "That is 3 words."
    assert demo_reply("count one") == "That is 1 word."


def test_reversing_words_and_the_rest() -> None:
    assert demo_reply("reverse hello big world") == "world big hello"
    assert demo_reply("repeat after me: lights on") == "lights on"
    assert demo_reply("help") == HELP
    assert demo_reply("") == "I did not catch that. Say 'help' to see what I can do."
    assert demo_reply("sayonara") == "You said: sayonara"


def test_help_names_only_what_works() -> None:
    for example in ("what is 2 + 3 * 4", "count to 5", "reverse these words"):
        assert example in HELP
    assert demo_reply("what is 2 + 3 * 4") == "2 + 3 * 4 = 14"
    assert demo_reply("reverse these words") == "words these"
