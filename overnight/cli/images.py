"""``overnight submit --image FILE``: the files go with the task as multipart/form-data; the server decides what
is an image (by content) and which sizes it takes, and says which limit a refused one broke."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from overnight.cli.errors import ClientError

MAX_IMAGE_BYTES = 64 * 2**20
"""More than any server takes (OVERNIGHT_IMAGES_MAX_BYTES is at most this): not read, let alone sent."""

ImageOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--image",
        metavar="FILE",
        help="An image for the model (PNG, JPEG, GIF or WebP: a screenshot, a design); repeat for more.",
        dir_okay=False,
    ),
]

ImagePart = tuple[str, tuple[str, bytes, str]]


def image_parts(paths: list[Path] | None) -> list[ImagePart]:
    """The ``image`` parts of the form, in the order given."""
    parts: list[ImagePart] = []
    for path in paths or []:
        try:
            with path.expanduser().open("rb") as file:
                data = file.read(MAX_IMAGE_BYTES + 1)
        except OSError as exc:
            raise ClientError(f"cannot read image {path}: {exc.strerror or exc}", exit_code=2) from exc
        if len(data) > MAX_IMAGE_BYTES:
            raise ClientError(f"image {path} is larger than {MAX_IMAGE_BYTES} bytes; no server takes it", exit_code=2)
        parts.append(("image", (path.name, data, "application/octet-stream")))
    return parts
