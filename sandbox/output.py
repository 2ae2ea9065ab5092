"""Capping command output: keep the head and the tail, say plainly what was left out."""

from __future__ import annotations


def truncate_middle(text: str, limit: int) -> str:
    """``text`` if it fits in ``limit`` characters, else its head and tail around an omission marker."""
    if len(text) <= limit:
        return text
    keep = max(limit // 2, 1)
    head, tail = text[:keep], text[-keep:]
    omitted = text[keep:-keep]
    lines = omitted.count("\n")
    size = len(omitted.encode("utf-8", errors="replace"))
    return f"{head}\n[... {lines} lines / {size} bytes omitted ...]\n{tail}"
