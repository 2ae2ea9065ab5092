"""Colours with enough contrast: every text colour of the stylesheet against the backgrounds it is shown on,
in the light and the dark scheme, at WCAG AA's 4.5:1 for text (read from web/static/app.css itself)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

CSS = (Path(__file__).parents[2] / "web" / "static" / "app.css").read_text()
AA = 4.5


def luminance(colour: str) -> float:
    channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(one: str, other: str) -> float:
    high, low = sorted((luminance(one), luminance(other)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def scheme(dark: bool) -> dict[str, str]:
    block = CSS.split("@media (prefers-color-scheme: dark)")[1 if dark else 0].split("}")[0]
    return dict(re.findall(r"--([\w-]+):\s*(#[0-9a-fA-F]{6});", block))


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
def test_text_colours_meet_aa_on_their_backgrounds(dark: bool) -> None:
    colours = scheme(dark)
    pairs = [(text, ground) for text in ("fg", "muted", "accent", "danger", "added", "removed")
             for ground in ("bg", "panel", "code-bg")] + [("accent-fg", "accent")]  # fmt: skip
    low = {f"{text} on {ground}": round(contrast(colours[text], colours[ground]), 2) for text, ground in pairs
           if contrast(colours[text], colours[ground]) < AA}  # fmt: skip
    assert low == {}


def test_state_badges_meet_aa() -> None:
    found = re.findall(r"\.state-(\w+) \{ background: (#[0-9a-f]{6}); color: (#[0-9a-f]{6});", CSS)
    badges = {name: (ground, text) for name, ground, text in found}
    assert set(badges) == {"queued", "preparing", "running", "succeeded", "failed", "cancelled"}
    low = {name: round(contrast(*pair), 2) for name, pair in badges.items() if contrast(*pair) < AA}
    assert low == {}
