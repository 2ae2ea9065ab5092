"""Environments as data: per repository pattern, a set-up script override, environment variables, secrets
(names here; values encrypted, ``overnight.secrets``) and the network policies of the set-up and agent phases.

What is valid is decided here, once, for the API that stores an environment and the worker that uses one:
the pattern's spelling, variable and secret names, sizes, and the network policies. Which environment a task
gets is ``best_match``: among the patterns that match its repository, an exact one over any wildcard, then
the longest, then the oldest.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal, Protocol, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter

from overnight.access import normalise

MAX_SCRIPT_BYTES = 256 * 1024
"""Largest set-up script override (the same limit as a repository's own script)."""
MAX_VALUE_BYTES = 32 * 1024
"""Largest value of one variable or secret."""
MIN_SECRET_LENGTH = 8
"""Shorter values would turn up by chance in the files the worker searches for secrets after a set-up."""
MAX_VARIABLES = 100
MAX_SECRETS = 50
MAX_DOMAINS = 200
MAX_PATTERN_LENGTH = 2048
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
RESERVED_NAMES = frozenset({
    # What every sandbox is given (sandbox.runtime BASE_ENV, CA_ENV) and the set-up proxy's variables: an
    # environment may not replace them (tests/overnight/test_environments_model.py keeps the list complete).
    "PATH", "HOME", "LANG", "PAGER", "GIT_PAGER", "PYTHONDONTWRITEBYTECODE", "PYTEST_ADDOPTS",
    "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT", "NODE_EXTRA_CA_CERTS", "GIT_SSL_CAINFO", "CURL_CA_BUNDLE",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
})  # fmt: skip
RESERVED_PREFIX = "OVERNIGHT_"
LOADER_PREFIXES = ("LD_", "GCONV_PATH", "LOCPATH", "MALLOC_", "GLIBC_TUNABLES", "NLSPATH", "HOSTALIASES", "RES_OPTIONS")
"""What the sandbox drops from every command's variables (``sandbox.execsupport.UNSAFE_ENV``: the loader and libc
act on them while a command starts with privileges): refused here rather than silently gone."""
_DOMAIN_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
DOMAIN = re.compile(rf"^(\*\.)?({_DOMAIN_LABEL}\.)*{_DOMAIN_LABEL}$")
_GLOB = re.compile(r"[*?\[]")


def check_name(name: str) -> str:
    """A variable's or secret's name: a shell identifier that is not Overnight's own."""
    if not NAME.match(name):
        raise ValueError("a name is letters, digits and _ (not first a digit), at most 128 characters")
    if name in RESERVED_NAMES or name.upper().startswith(RESERVED_PREFIX):
        raise ValueError(f"{name} is set by Overnight itself (reserved: {RESERVED_PREFIX}*, PATH, HOME, proxies, CAs)")
    if name.startswith(LOADER_PREFIXES):
        raise ValueError(f"{name}: the sandbox drops variables the dynamic loader and libc act on (LD_*, MALLOC_*...)")
    return name


def check_value(value: str) -> str:
    """A variable's or secret's value (the message never quotes it)."""
    if "\0" in value:
        raise ValueError("a value must not contain NUL characters")
    if len(value.encode()) > MAX_VALUE_BYTES:
        raise ValueError(f"a value may be at most {MAX_VALUE_BYTES} bytes")
    return value


def check_secret(value: str) -> str:
    """A secret's value: also long enough that finding it in a set-up's files is no accident (the worker looks)."""
    if len(value) < MIN_SECRET_LENGTH:
        raise ValueError(f"a secret is at least {MIN_SECRET_LENGTH} characters")
    return check_value(value)


def check_script(text: str) -> str:
    if not text.strip():
        raise ValueError("the set-up script is empty (to remove the override, send null)")
    if "\0" in text:
        raise ValueError("the set-up script must not contain NUL characters")
    if len(text.encode()) > MAX_SCRIPT_BYTES:
        raise ValueError(f"the set-up script may be at most {MAX_SCRIPT_BYTES} bytes")
    return text


def check_domain(domain: str) -> str:
    domain = domain.strip().lower().rstrip(".")
    if len(domain) > 253 or not DOMAIN.match(domain) or domain.rsplit(".", 1)[-1].isdigit():
        raise ValueError(f"{domain[:80]!r} is not a host name or *.domain wildcard (addresses are not allowed)")
    return domain


def pattern_key(pattern: str) -> str:
    """The one spelling of a repository pattern (what is stored and matched): ``*`` (every repository), an
    absolute local path, or an address (``https://``, ``ssh://``, ``git@host:path``) spelled as
    ``overnight.access.normalise`` spells it; ``*``, ``?`` and ``[...]`` are wildcards (fnmatch)."""
    value = pattern.strip()
    if not value or len(value) > MAX_PATTERN_LENGTH:
        raise ValueError(f"a pattern is 1 to {MAX_PATTERN_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("a pattern must not contain whitespace or control characters")
    if value == "*":
        return value
    if value.startswith("/"):
        if ".." in value.split("/"):
            raise ValueError("a local path pattern must not contain '..'")
        return os.path.normpath(value).removesuffix("/.git") if value != "/" else value
    key = normalise(value)
    host = key.split("://", 1)[1].split("/", 1)[0] if "://" in key else ""
    if not key.startswith(("https://", "ssh://")) or not host:
        raise ValueError("a pattern is *, an absolute path, or an https://, ssh:// or git@host:path address")
    if _GLOB.search(host):
        # fnmatch's * also matches "/": a wildcard host would match any host whose path ends the right way.
        raise ValueError("a pattern's host is spelled out (wildcards only in the path)")
    return key


def repository_key(repo: str) -> str:
    """A task's repository spelled as patterns are (a local path as it is, an address normalised)."""
    return os.path.normpath(repo) if repo.startswith("/") else normalise(repo)


class Stored(Protocol):
    @property
    def id(self) -> int: ...

    @property
    def pattern(self) -> str: ...


S = TypeVar("S", bound=Stored)


def best_match(repo: str, environments: Iterable[S]) -> S | None:
    """The environment whose pattern decides for ``repo``: exact over wildcard, then longest, then oldest."""
    key = repository_key(repo)
    matching = [env for env in environments if fnmatch.fnmatchcase(key, env.pattern)]
    if not matching:
        return None
    return min(matching, key=lambda env: (bool(_GLOB.search(env.pattern)), -len(env.pattern), env.id))


class _Policy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class NoNetwork(_Policy):
    """No network at all."""

    mode: Literal["none"] = "none"


class FullNetwork(_Policy):
    """The public internet (never the host, its loopback, link-local or private ranges: docs/sandbox.md)."""

    mode: Literal["full"] = "full"


Domain = Annotated[str, AfterValidator(check_domain)]


class AllowlistNetwork(_Policy):
    """Only these hosts, through the worker's egress proxy (docs/environments.md, "Network policies at work")."""

    mode: Literal["allowlist"] = "allowlist"
    domains: list[Domain] = Field(min_length=1, max_length=MAX_DOMAINS)
    """Host names; ``*.example.com`` is every host under example.com (not example.com itself)."""
    read_only: bool = False
    """Only GET and HEAD requests (and OPTIONS, which they need); so no HTTPS, whose method the proxy cannot see."""


NetworkPolicy = Annotated[NoNetwork | FullNetwork | AllowlistNetwork, Field(discriminator="mode")]
Policy = NoNetwork | FullNetwork | AllowlistNetwork
DEFAULT_SETUP_NETWORK = FullNetwork()
"""A set-up reaches what the operator's set-up network reaches (the package registries), as before."""
DEFAULT_AGENT_NETWORK = NoNetwork()
_POLICY: TypeAdapter[Policy] = TypeAdapter(NetworkPolicy)


def stored_policy(data: dict[str, Any] | None, default: Policy) -> Policy:
    """A policy as stored (its JSON; empty: ``default``)."""
    return _POLICY.validate_python(data) if data else default


def describe_policy(policy: Policy) -> str:
    """One line for people: ``none``, ``full``, ``allowlist (GET/HEAD only): a.com, *.b.org``."""
    if isinstance(policy, AllowlistNetwork):
        methods = " (GET/HEAD only)" if policy.read_only else ""
        return f"allowlist{methods}: {', '.join(policy.domains)}"
    return policy.mode


def names_in_use(variables: Sequence[str], secrets: Sequence[str]) -> list[str]:
    """Names that are both a variable and a secret (refused: one would hide the other)."""
    return sorted(set(variables) & set(secrets))
