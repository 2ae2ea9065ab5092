"""The rules image fetches rest on, one by one: which addresses are refused, which GitHub hosts an issue's
images may come from, which images of a text are found, and what counts as an image."""

from __future__ import annotations

import io
import ipaddress

import httpx
import pytest
from PIL import Image

from overnight.github.images import image_url_allowed, image_urls, issue_image_urls, token_wanted
from overnight.imagefetch import refused_address
from overnight.images import ImageRefused, checked_image, sniff_media_type
from tests.images import GIF, png


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "172.16.0.9", "192.168.1.1", "169.254.169.254",
                                     "100.64.0.1", "0.0.0.0", "224.0.0.1", "::1", "fe80::1", "fd00::1",
                                     "::ffff:127.0.0.1", "::ffff:169.254.169.254"])  # fmt: skip
def test_addresses_that_are_not_public_are_refused(address: str) -> None:
    assert refused_address(ipaddress.ip_address(address), [])


def test_public_addresses_pass_and_an_allowed_network_lets_its_own_through_only() -> None:
    assert not refused_address(ipaddress.ip_address("140.82.112.3"), [])
    allowed = [ipaddress.ip_network("10.8.0.0/16")]
    assert not refused_address(ipaddress.ip_address("10.8.3.4"), allowed)
    assert refused_address(ipaddress.ip_address("10.9.3.4"), allowed)
    assert refused_address(ipaddress.ip_address("169.254.169.254"), allowed)


@pytest.mark.parametrize(("url", "allowed"), [
    ("https://github.com/user-attachments/assets/0c1d-22", True),
    ("https://private-user-images.githubusercontent.com/1/2.png?jwt=x", True),
    ("https://raw.githubusercontent.com/acme/app/main/shot.png", True),
    ("http://github.com/user-attachments/assets/1", False),  # not https
    ("https://github.com/login", False),  # github.com, but not an attachment
    ("https://github.com.evil.example/user-attachments/assets/1", False),
    ("https://evilgithubusercontent.com/a.png", False),
    ("https://githubusercontent.com:8443/a.png", False),
    ("https://images.example.com/a.png", False),
])  # fmt: skip
def test_only_githubs_own_image_hosts_are_allowed_for_github_com(url: str, allowed: bool) -> None:
    assert image_url_allowed("https://api.github.com")(httpx.URL(url)) is allowed


def test_an_enterprise_server_is_allowed_with_its_own_scheme_and_port() -> None:
    allowed = image_url_allowed("https://ghe.acme.internal/api/v3")
    assert allowed(httpx.URL("https://ghe.acme.internal/storage/user/1/files/2"))
    assert not allowed(httpx.URL("http://ghe.acme.internal/storage/user/1/files/2"))
    assert not allowed(httpx.URL("https://ghe.acme.internal:8443/x"))


@pytest.mark.parametrize(("url", "allowed"), [
    ("https://github.com/acme/app/raw/main/shot.png", True),
    ("https://github.com/ACME/App/raw/main/shot.png", True),
    ("https://raw.githubusercontent.com/acme/app/main/shot.png", True),
    ("https://github.com/acme/secret/raw/main/shot.png", False),
    ("https://raw.githubusercontent.com/acme/secret/main/shot.png", False),
    ("https://raw.githubusercontent.com/acme/app-other/main/shot.png", False),
    ("https://github.com/user-attachments/assets/1", True),
])  # fmt: skip
def test_raw_files_only_of_the_tasks_own_repository(url: str, allowed: bool) -> None:
    """The installation token reads every repository of the installation, and raw addresses can be guessed: an
    issue must not make the worker read another repository's file with it."""
    assert image_url_allowed("https://api.github.com", "acme/app")(httpx.URL(url)) is allowed
    assert issue_image_urls("https://api.github.com", f"![x]({url})", limit=4, repo="acme/app") == (
        [url] if allowed else []
    )


def test_an_enterprise_servers_raw_files_are_of_the_tasks_repository_too() -> None:
    allowed = image_url_allowed("https://ghe.acme.internal/api/v3", "acme/app")
    assert allowed(httpx.URL("https://ghe.acme.internal/acme/app/raw/main/a.png"))
    assert allowed(httpx.URL("https://ghe.acme.internal/raw/acme/app/main/a.png"))
    assert not allowed(httpx.URL("https://ghe.acme.internal/acme/secret/raw/main/a.png"))
    assert not allowed(httpx.URL("https://ghe.acme.internal/raw/acme/secret/main/a.png"))


@pytest.mark.parametrize(("url", "wanted"), [
    ("https://github.com/user-attachments/assets/1", True),
    ("https://raw.githubusercontent.com/acme/app/main/a.png", True),
    ("https://private-user-images.githubusercontent.com/1/a.png?jwt=x", False),
    ("https://camo.githubusercontent.com/abc", False),
    ("https://avatars.githubusercontent.com/u/1", False),
])  # fmt: skip
def test_the_token_goes_only_to_the_hosts_that_need_it(url: str, wanted: bool) -> None:
    assert token_wanted("https://api.github.com")(httpx.URL(url)) is wanted
    ghe = token_wanted("https://ghe.acme.internal/api/v3")
    assert ghe(httpx.URL("https://ghe.acme.internal/storage/1")) and not ghe(httpx.URL(url))


def test_a_canvas_over_the_limit_is_refused_before_it_is_decoded() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (300, 300)).save(buffer, format="PNG")
    data = buffer.getvalue()
    assert checked_image(data, max_bytes=2**20, max_pixels=90_000, what="x", source="upload").media_type == "image/png"
    with pytest.raises(ImageRefused, match="OVERNIGHT_IMAGES_MAX_PIXELS") as refused:
        checked_image(data, max_bytes=2**20, max_pixels=89_999, what="x", source="upload")
    assert refused.value.status == 413
    with pytest.raises(ImageRefused, match="decodes") as broken:
        checked_image(data[: len(data) // 2], max_bytes=2**20, what="x", source="upload")
    assert broken.value.status == 415


def test_images_are_found_in_markdown_and_html_in_order_each_once_and_capped() -> None:
    text = (
        '![a](https://github.com/user-attachments/assets/1) <IMG alt="b" SRC="https://x.githubusercontent.com/2">\n'
        "![again](https://github.com/user-attachments/assets/1) [a link](https://github.com/user-attachments/assets/3)"
    )
    assert image_urls(text, "![c](<https://github.com/user-attachments/assets/4>)") == [
        "https://github.com/user-attachments/assets/1", "https://x.githubusercontent.com/2",
        "https://github.com/user-attachments/assets/4",
    ]  # fmt: skip
    assert issue_image_urls("https://api.github.com", text, limit=1) == ["https://github.com/user-attachments/assets/1"]


def test_an_image_is_known_by_its_first_bytes() -> None:
    assert sniff_media_type(png()) == "image/png"
    assert sniff_media_type(GIF) == "image/gif"
    assert sniff_media_type(b"\xff\xd8\xff\xe0\x00\x10JFIF") == "image/jpeg"
    assert sniff_media_type(b"RIFF\x24\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert sniff_media_type(b"RIFF\x24\x00\x00\x00WAVEfmt ") is None
    assert sniff_media_type(b"<svg xmlns='http://www.w3.org/2000/svg'/>") is None  # SVG is script, not taken
    assert sniff_media_type(b"") is None
