"""`overnight doctor`'s image check: when tasks may carry images (``OVERNIGHT_IMAGES_ENABLED``), the model server
must take them, or the first task with a screenshot fails mid-run. One small request with a 16x16 PNG as an
``image_url`` data URL, in the form the agent sends: vLLM serving a text-only model (or Medium 3.5 with
``--language-model-only``) answers it 400 "At most 0 image(s) may be provided in one prompt"."""

from __future__ import annotations

from typing import Any

import httpx

PROBE_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAIAAACQkWg2AAAAFklEQVR4nGO4o6FBEmIY1TCqYfhqAAAyBCwQhvh37QAAAABJRU5ErkJggg=="
)
"""A 16x16 red PNG."""
VISION_CHECK = "takes images (tasks may carry them)"
VISION_FIX = (
    "serve a model with vision and without --language-model-only (infra/vllm/serve.sh passes it only with "
    "LANGUAGE_MODEL_ONLY=1), or set OVERNIGHT_IMAGES_ENABLED=false so that tasks refuse images when they are filed"
)


def probe_body(model: str, reasoning_effort: str | None) -> dict[str, Any]:
    """As the agent sends images: data URL parts after the text, with the run's reasoning_effort."""
    content = [
        {"type": "text", "text": "What colour is this image? Answer in one word."},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PROBE_PNG}"}},
    ]
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 64, "temperature": 0}
    return body | ({"reasoning_effort": reasoning_effort} if reasoning_effort else {})


def takes_images(http: httpx.Client, model: str, reasoning_effort: str | None) -> str:
    """The server's answer to an image (any 200 passes: what the model says depends on its weights)."""
    response = http.post("/chat/completions", json=probe_body(model, reasoning_effort))
    if response.status_code >= 400:
        try:
            message = response.json().get("message") or response.json().get("error", {}).get("message")
        except (ValueError, AttributeError):
            message = None
        raise RuntimeError(f"HTTP {response.status_code} to a request with one image: {message or response.text[:200]}")
    usage = response.json().get("usage") or {}
    return f"HTTP {response.status_code}, {usage.get('prompt_tokens', '?')} prompt tokens with a 16x16 image"
