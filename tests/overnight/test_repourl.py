from __future__ import annotations

import pytest

from overnight.repourl import InvalidRepoError, validate_ref, validate_repo_url


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/acme/widgets.git",
        "https://git.example.com:8443/group/sub/project",
        "ssh://git@github.com/acme/widgets.git",
        "git@github.com:acme/widgets.git",
    ],
)
def test_remote_addresses_are_accepted(url: str) -> None:
    assert validate_repo_url(url, allow_local=False) == url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("file:///etc", "file:// URLs are not allowed"),
        ("ext::sh -c touch% /tmp/pwned", "whitespace"),
        ("ext::ssh", "transport helpers"),
        ("fd::17", "transport helpers"),
        ("--upload-pack=touch /tmp/x", "must not start with '-'"),
        ("-u", "must not start with '-'"),
        ("http://github.com/a/b", "unsupported scheme 'http'"),
        ("ftp://host/a", "unsupported scheme"),
        ("https://user:secret@github.com/a/b", "credentials"),
        ("https://token@github.com/a/b", "credentials"),
        ("https:///nohost", "no valid host"),
        ("https://github.com", "no path"),
        ("https://github.com/a/b?x=1", "query"),
        ("/srv/repos/project", "local repository paths are not allowed"),
        ("relative/path", "must be an https:// or ssh URL"),
        ("", "empty"),
        ("https://github.com/a/b\n--x", "whitespace"),
    ],
)
def test_refused_addresses_say_why(url: str, says: str) -> None:
    with pytest.raises(InvalidRepoError, match=None) as info:
        validate_repo_url(url, allow_local=False)
    assert says in str(info.value)


def test_local_paths_only_when_allowed() -> None:
    assert validate_repo_url("/srv/repos/project", allow_local=True) == "/srv/repos/project"
    with pytest.raises(InvalidRepoError, match=r"'\.\.'"):
        validate_repo_url("/srv/../etc", allow_local=True)
    with pytest.raises(InvalidRepoError, match="file://"):
        validate_repo_url("file:///srv/repos/project", allow_local=True)


@pytest.mark.parametrize("ref", ["main", "feature/x-1", "v1.2.3", "0123456789abcdef0123456789abcdef01234567"])
def test_valid_refs(ref: str) -> None:
    assert validate_ref(ref) == ref


@pytest.mark.parametrize("ref", ["--orphan", "a..b", "a b", "x~1", "HEAD^", "a:b", "ref.lock", "a//b", "@{-1}"])
def test_invalid_refs(ref: str) -> None:
    with pytest.raises(InvalidRepoError):
        validate_ref(ref)
