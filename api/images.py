"""Images on ``POST /v1/tasks``: uploaded as multipart/form-data, or named by address in the JSON body.

A multipart request has a part ``task`` holding the JSON body as text and a part ``image`` per file. The form
is read here (at most ``OVERNIGHT_IMAGES_MAX_PER_TASK`` files, the body within its route's byte limit), each file
is checked by its content, and the route then runs on the ``task`` part exactly as if that JSON had been sent
alone: the JSON path, its validation and its errors stay the same. Addresses in ``image_urls`` are fetched by
:func:`task_images` (``overnight.imagefetch``: public addresses only, each redirect checked, bounded in time
and size). Every refusal is a 4xx that names the limit or rule.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from api.errors import APIError
from overnight.imagefetch import FetchPolicy, fetch_image
from overnight.images import KINDS, ImageRefused, ImageSettings, TaskImageData, checked_image, too_many
from overnight.settings import Settings

UPLOADED_KEY = "overnight.uploaded_images"
MULTIPART = "multipart/form-data"

MULTIPART_TASK: dict[str, Any] = {
    "requestBody": {
        "content": {
            MULTIPART: {
                "schema": {
                    "type": "object",
                    "required": ["task"],
                    "properties": {
                        "task": {"type": "string", "description": "The JSON body (as for application/json), as text."},
                        "image": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": f"Image files ({KINDS}, judged by content), in the order the model "
                            "sees them (OVERNIGHT_IMAGES_MAX_BYTES each, OVERNIGHT_IMAGES_MAX_PER_TASK in all).",
                        },
                    },
                }
            }
        }
    },
    "responses": {
        "415": {"description": f"An image that is not a {KINDS} image."},
    },
}
"""The route's ``openapi_extra``: it documents the multipart form and makes :class:`ImageUploadRoute` take it."""


def refused(exc: ImageRefused, field: str) -> APIError:
    return APIError(exc.status, exc.code, str(exc), [{"field": field, "message": str(exc)}])


def images_disabled() -> APIError:
    return APIError(422, "images_disabled", "this server takes no images with tasks (OVERNIGHT_IMAGES_ENABLED is off)")


class ImageUploadRoute(APIRoute):
    """A route that takes multipart/form-data besides JSON when its ``openapi_extra`` declares the form."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        content = ((self.openapi_extra or {}).get("requestBody") or {}).get("content") or {}
        if MULTIPART not in content:
            return handler

        async def route_handler(request: Request) -> Response:
            if request.headers.get("content-type", "").split(";")[0].strip().lower() == MULTIPART:
                request = await _as_json_request(request)
            return await handler(request)

        return route_handler


async def _as_json_request(request: Request) -> Request:
    """The request as if its ``task`` part had been sent as the JSON body; the checked images in its scope."""
    settings: Settings = request.app.state.settings
    limits = settings.images
    if not limits.enabled:
        raise images_disabled()
    try:
        form = await request.form(
            max_files=limits.max_per_task, max_fields=8, max_part_size=settings.api.max_upload_bytes
        )
    except HTTPException as exc:
        if "files" in str(exc.detail).lower():
            raise APIError(422, "too_many_images", f"more than {limits.max_per_task} images given; a task may "
                           "carry at most that many (OVERNIGHT_IMAGES_MAX_PER_TASK)") from exc  # fmt: skip
        raise APIError(400, "bad_multipart", f"the multipart body could not be read: {exc.detail}") from exc
    try:
        unknown = sorted(set(form.keys()) - {"task", "image"})
        if unknown:
            raise APIError(422, "validation_error", f"unknown form parts {unknown}; send 'task' and 'image'",
                           [{"field": name, "message": "unknown form part"} for name in unknown])  # fmt: skip
        task = form.get("task")
        if task is None:
            raise APIError(422, "validation_error", "the form has no 'task' part (the JSON body, as text)",
                           [{"field": "task", "message": "required"}])  # fmt: skip
        body = await task.read(settings.api.max_upload_bytes) if isinstance(task, UploadFile) else task.encode()
        images = [await _uploaded(part, index, limits) for index, part in enumerate(form.getlist("image"))]
    finally:
        await form.close()
    headers = [(k, v) for k, v in request.scope["headers"] if k.lower() not in (b"content-type", b"content-length")]
    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    scope = {**request.scope, "headers": headers, UPLOADED_KEY: images}
    replayed = Request(scope, request.receive)
    replayed._body = body  # what FastAPI reads as the JSON body
    return replayed


async def _uploaded(part: UploadFile | str, index: int, limits: ImageSettings) -> TaskImageData:
    field = f"image[{index}]"
    if not isinstance(part, UploadFile):
        details = [{"field": field, "message": "not a file"}]
        raise APIError(422, "validation_error", f"{field} must be a file part", details)
    what = f"image {index + 1}" + (f" ({part.filename[:100]})" if part.filename else "")
    data = await part.read(limits.max_bytes + 1)
    try:
        return checked_image(data, max_bytes=limits.max_bytes, max_pixels=limits.max_pixels, what=what, source="upload")
    except ImageRefused as exc:
        raise refused(exc, field) from exc


def task_images(request: Request, urls: Sequence[str], limits: ImageSettings) -> list[TaskImageData]:
    """The task's images: the uploaded ones (already checked), then those at ``urls``, fetched now."""
    uploaded: list[TaskImageData] = list(request.scope.get(UPLOADED_KEY) or [])
    if not urls:
        return uploaded
    if not limits.enabled:
        raise images_disabled()
    if len(uploaded) + len(urls) > limits.max_per_task:
        raise refused(too_many(len(uploaded) + len(urls), limits.max_per_task), "image_urls")
    policy = FetchPolicy(
        max_bytes=limits.max_bytes, max_pixels=limits.max_pixels, timeout=limits.fetch_timeout,
        allowed_networks=limits.fetch_allowed_networks,
    )  # fmt: skip
    fetched = []
    for index, url in enumerate(urls):
        try:
            fetched.append(fetch_image(url, policy, what=f"image_urls[{index}]", source="url"))
        except ImageRefused as exc:
            raise refused(exc, f"image_urls.{index}") from exc
    return uploaded + fetched
