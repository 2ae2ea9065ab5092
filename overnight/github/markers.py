"""What Overnight marks its own GitHub traffic with, shared by the webhook parser (which must not take
Overnight's comments for requests) and the worker and the REST client (which write them)."""

from __future__ import annotations

MARK = "<!-- overnight -->"
"""Every comment Overnight writes carries this (hidden when rendered); a comment carrying it is never a request."""


def reaction_target(source: str, number: int, comment_id: int | None) -> str:
    """What a 👀 goes on: the labelled issue, or the comment that asked (issue or review comment)."""
    if comment_id is None:
        return f"issues/{number}"
    kind = "pulls" if source == "review-comment" else "issues"
    return f"{kind}/comments/{comment_id}"
