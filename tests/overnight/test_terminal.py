"""``visible``: what the CLI does to every string from the server before it reaches a terminal."""

from __future__ import annotations

import pytest

from overnight.cli.terminal import visible


@pytest.mark.parametrize(
    ("hostile", "shown"),
    [
        ("a\x1b[2Kb", "a\\x1b[2Kb"),  # erase the line
        ("\x1b]8;;https://evil/\x07click\x1b]8;;\x07", "\\x1b]8;;https://evil/\\x07click\\x1b]8;;\\x07"),  # OSC 8
        ("\x9b2J", "\\x9b2J"),  # C1 CSI
        ("x\u202egnp.exe", "x\\u202egnp.exe"),  # right-to-left override
        ("rm\u200b -rf", "rm\\u200b -rf"),  # zero-width space between what looks adjacent
        ("one\u2028two", "one\\u2028two"),  # a line break the reader does not see as one
        ("\ufeffBOM", "\\ufeffBOM"),
    ],
)
def test_control_and_invisible_characters_are_shown(hostile: str, shown: str) -> None:
    assert visible(hostile) == shown


def test_ordinary_text_is_left_alone() -> None:
    text = "naïve café — 日本語\tindented\nnext line ✓"
    assert visible(text) == text
