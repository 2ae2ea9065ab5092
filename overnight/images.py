"""Images given with a task: what counts as one (PNG, JPEG, GIF or WebP, judged by its first bytes, never by
what the sender says it is), the limits that apply to each (``ImageSettings``, ``settings.images``), and the
data URL the model is sent.

The API checks uploads and the images it fetches with :func:`checked_image`; the worker does the same for the
images of a GitHub issue. Events and trajectories name an image by :func:`image_reference`, never by its bytes.
"""

from __future__ import annotations

import base64
import hashlib
import io
import warnings
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

ImageSource = Literal["upload", "url", "github"]
KINDS = "PNG, JPEG, GIF or WebP"
REFERENCE_PREFIX = "overnight-image:sha256:"
MAX_PIXELS = 16 * 2**20
"""The default largest canvas (width x height) of an image: 16 Mpx, 4096 x 4096."""
_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}


class ImageSettings(BaseModel):
    """Images given with a task (uploads, URLs the API fetches, images in a GitHub issue), sent to the model."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    enabled: bool = True
    """Accept images with tasks (the model server must take them: `overnight doctor` checks; off: an image is
    refused with 422 and GitHub issue images are left out)."""
    max_bytes: int = Field(default=5 * 2**20, ge=1024, le=64 * 2**20)
    """Largest image accepted (uploaded or fetched); a larger one is refused with 413."""
    max_per_task: int = Field(default=4, ge=1, le=16)
    """Images one task may carry; more are refused with 422 (GitHub: the first ones are kept)."""
    max_pixels: int = Field(default=MAX_PIXELS, ge=64 * 64, le=2**28)
    """Largest canvas (width x height) an image's header may claim; a larger one is refused with 413 before
    it is decoded (a small file can claim a canvas of gigabytes)."""
    fetch_timeout: float = Field(default=10.0, gt=0, le=120)
    """Seconds one image fetch may take, redirects included."""
    fetch_allowed_networks: list[IPv4Network | IPv6Network] = Field(default_factory=list)
    """Networks image URLs may point into although they are loopback, private, link-local or otherwise not
    public (JSON list of CIDRs; e.g. an internal GitHub Enterprise); every other such address is refused, on
    every redirect too."""

    @property
    def upload_allowance(self) -> int:
        """What the images of one task may add to the body of `POST /v1/tasks` (multipart framing included)."""
        return self.max_per_task * (self.max_bytes + 4096) if self.enabled else 0


class ImageRefused(ValueError):
    """An image (or an address of one) that is not accepted: ``code`` for the API's answer, ``status`` its HTTP
    status, the message names the limit or rule that refused it."""

    def __init__(self, code: str, message: str, *, status: int = 422) -> None:
        super().__init__(message)
        self.code, self.status = code, status


def sniff_media_type(data: bytes) -> str | None:
    """The media type of ``data`` from its magic bytes, or None when it is none of the four kinds."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if len(data) >= 12 and data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "image/webp"
    return None


@dataclass(frozen=True, kw_only=True)
class TaskImageData:
    """One image that passed the checks, with where it came from."""

    media_type: str
    data: bytes
    source: ImageSource
    url: str | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def checked_image(
    data: bytes,
    *,
    max_bytes: int,
    what: str,
    source: ImageSource,
    url: str | None = None,
    max_pixels: int = MAX_PIXELS,
) -> TaskImageData:
    """``data`` as an accepted image; raises :class:`ImageRefused` naming ``what`` and the rule it broke.

    The first bytes name the kind; then Pillow reads the header (the canvas must be at most ``max_pixels``) and
    decodes the whole image, so what reaches the model server is an image its decoder reads, not a file that
    only starts like one."""
    if len(data) > max_bytes:
        raise too_large(what, max_bytes)
    media_type = sniff_media_type(data)
    if media_type is None:
        raise not_an_image(what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(_FORMATS)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise too_many_pixels(what, width, height, max_pixels)
                if _FORMATS.get(image.format or "") != media_type:
                    raise not_an_image(what)
                image.load()  # the whole decode, bounded by the canvas checked above
    except ImageRefused:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise too_many_pixels(what, 0, 0, max_pixels) from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... for a file it cannot read
        raise not_an_image(what) from exc
    return TaskImageData(media_type=media_type, data=data, source=source, url=url)


def not_an_image(what: str) -> ImageRefused:
    return ImageRefused(
        "not_an_image",
        f"{what} is not a {KINDS} image that decodes (judged by its content, not its name or type)",
        status=415,
    )


def too_many_pixels(what: str, width: int, height: int, max_pixels: int) -> ImageRefused:
    size = f" ({width} x {height})" if width and height else ""
    return ImageRefused(
        "image_too_large",
        f"{what}{size} is larger than the limit of {max_pixels} pixels per image (OVERNIGHT_IMAGES_MAX_PIXELS)",
        status=413,
    )


def too_large(what: str, max_bytes: int) -> ImageRefused:
    return ImageRefused(
        "image_too_large",
        f"{what} is larger than the limit of {max_bytes} bytes per image (OVERNIGHT_IMAGES_MAX_BYTES)",
        status=413,
    )


def too_many(count: int, max_per_task: int) -> ImageRefused:
    return ImageRefused(
        "too_many_images",
        f"{count} images given; a task may carry at most {max_per_task} (OVERNIGHT_IMAGES_MAX_PER_TASK)",
    )


def data_url(media_type: str, data: bytes) -> str:
    """The image as the model is sent it: an OpenAI-style ``image_url`` holds a base64 data URL."""
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def image_reference(sha256: str) -> str:
    """What events and trajectories hold in place of an image's data URL."""
    return f"{REFERENCE_PREFIX}{sha256}"
