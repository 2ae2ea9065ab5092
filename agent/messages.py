"""What the user sends while the agent works, as the messages appended to its history.

Steers go in at the next tool boundary, after the tool results of the step under way, so the history stays
append-only and the prefix cache warm. Queued messages wait until the model would finish; then its ``finish``
is answered "not yet", they follow (with any steer not yet given), and the run goes on in the same sandbox and
history. The loop reads them only through the :class:`~agent.base.Mailbox` it was handed, never the database.

The task's own first message may carry images (:func:`task_content`); trajectories keep a reference to each
image's SHA-256 in place of its data (:func:`without_image_data`).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from typing import Any

from agent.base import LimitsExceeded, Mailbox
from agent.budget import Spend
from agent.prompts import queued_message, steer_message
from overnight.images import TaskImageData, data_url, image_reference


def steers(mailbox: Mailbox, step: int) -> list[dict[str, Any]]:
    """The steers not yet given, as user messages for the request of model call ``step``."""
    return [
        {"role": "user", "content": steer_message(message.text, message.author)}
        for message in mailbox.take_steers(step)
    ]


def after_finish(mailbox: Mailbox, spend: Spend) -> list[dict[str, Any]]:
    """What the user sent that the model has not seen, when it calls ``finish``: the queued messages, then any
    steer not yet given, as user messages for the next model call. Empty: the run ends. Also empty when the
    budgets allow no further call, so a run that finished is not turned into one that ran out of steps: what
    waits is then dropped with the task's end, and says so."""
    try:
        spend.check_before_step()
    except LimitsExceeded:
        return []
    step = spend.steps + 1
    queued = [
        {"role": "user", "content": queued_message(message.text, message.author)}
        for message in mailbox.take_queued(step)
    ]
    return queued + steers(mailbox, step)


def task_content(text: str, images: Sequence[TaskImageData]) -> str | list[dict[str, Any]]:
    """The content of the task's user message: its text alone, or the text then each image as an OpenAI-style
    ``image_url`` part holding a data URL (the form vLLM and mistral-common take)."""
    if not images:
        return text
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": data_url(image.media_type, image.data)}} for image in images]
    return parts


def without_image_data(message: dict[str, Any]) -> dict[str, Any]:
    """``message`` as trajectories keep it: each image's data URL replaced by a reference to its SHA-256."""
    content = message.get("content")
    if not isinstance(content, list) or not any(part.get("type") == "image_url" for part in content):
        return message
    return {**message, "content": [_referenced(part) for part in content]}


def text_length(message: dict[str, Any]) -> int:
    """The characters of ``message``'s text (an image's data URL is not text: the server reports its tokens)."""
    content = message.get("content")
    if isinstance(content, list):
        return sum(len(str(part.get("text") or "")) for part in content)
    return len(str(content or ""))


def _referenced(part: dict[str, Any]) -> dict[str, Any]:
    url = str((part.get("image_url") or {}).get("url") or "")
    if part.get("type") != "image_url" or not url.startswith("data:"):
        return part
    header, _, payload = url.partition(",")
    digest = hashlib.sha256(base64.b64decode(payload)).hexdigest()
    media_type = header.removeprefix("data:").split(";")[0]
    return {"type": "image_url", "image_url": {"url": image_reference(digest)}, "media_type": media_type}
