"""The environments' pages (issue 18): the list and one environment as the server renders them — what each user
may see (an admin every one, an owner theirs, anyone else none: "not found"), its policies in words, its secrets
by name only — and in Debian's Chromium an owner changing it through the forms (the API with the CSRF token),
a secret whose value is nowhere in the page after it is set, and a non-owner who can change nothing."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from playwright.sync_api import expect
from pydantic import SecretStr
from sqlalchemy.orm import Session, sessionmaker

import store.environments
from overnight.environments import AllowlistNetwork, describe_policy
from overnight.secrets import new_key
from overnight.settings import SecretsSettings, Settings
from store.engine import make_engine, migrate
from tests.web.conftest import CSRF_META, Browser
from tests.web.redteam import LiveServer, Visitor, probe

pytest_plugins = ["tests.web.redteam"]  # the live server and the browser

PATTERN = "https://github.com/acme/*"
VALUE = "npm_" + secrets.token_hex(16)
HOSTILE = '<b class="h9-injected">x</b><img src=x onerror="__h9pwn.push(1)">'


@pytest.fixture
def settings(tmp_path: Path, redis_url: str) -> Iterator[Settings]:
    """The web tests' settings with a secrets key (environments' secrets need one)."""
    queue = f"test-web-env-{secrets.token_hex(4)}"
    settings = Settings(data_dir=tmp_path / "data", broker_url=redis_url, queue=queue, allow_local_repos=False,
                        secrets=SecretsSettings(key=SecretStr(new_key())))  # fmt: skip
    migrate(make_engine(settings.resolved_database_url))
    yield settings
    redis.Redis.from_url(redis_url).delete(queue)


@pytest.fixture
def environment(browser: Callable[..., Browser]) -> dict[str, Any]:
    """alice's environment, made by the admin through the API, with a script, a variable, a policy and a
    secret."""
    root = browser("root")
    made = root.api("POST", "/v1/environments", json={
        "pattern": PATTERN, "owners": ["alice"], "setup_script": f"npm ci\necho '{HOSTILE}'\n",
        "variables": {"NODE_ENV": "test", "BANNER": HOSTILE},
        "agent_network": {"mode": "allowlist", "domains": ["registry.npmjs.org", "*.example.com"], "read_only": True},
    })  # fmt: skip
    assert made.status_code == 201, made.text
    env = made.json()
    sealed = root.api("PUT", f"/v1/environments/{env['id']}/secrets/NPM_TOKEN", json={"value": VALUE})
    assert sealed.status_code == 201, sealed.text
    return env  # type: ignore[no-any-return]


def test_the_list_shows_each_user_the_environments_they_manage(
    browser: Callable[..., Browser], environment: dict[str, Any]
) -> None:
    row = f'id="environment-{environment["id"]}"'
    policy = describe_policy(AllowlistNetwork(domains=["registry.npmjs.org", "*.example.com"], read_only=True))
    for user in ("root", "alice"):
        page = browser(user).page("/environments")
        assert page.status_code == 200 and row in page.text, user
        cells = re.findall(r"<td>(.*?)</td>", page.text.split(row)[1].split("</tr>")[0], re.S)
        assert f"<code>{PATTERN}</code>" in cells[0] and "(own set-up script)" in cells[0]
        assert cells[1:6] == ["full", policy, "2", "1", "alice"]
    assert 'id="environment-create"' in browser("root").page("/environments").text  # admins create
    assert 'id="environment-create"' not in browser("alice").page("/environments").text
    bob = browser("bob").page("/environments").text
    assert row not in bob and "You manage no environment" in bob


def test_the_page_shows_names_and_policies_never_a_secrets_value(
    browser: Callable[..., Browser], environment: dict[str, Any]
) -> None:
    page = browser("alice").page(f"/environments/{environment['id']}")
    assert page.status_code == 200
    html = page.text
    assert VALUE not in html
    assert "<code>NPM_TOKEN</code>" in html and 'data-remove-secret="NPM_TOKEN"' in html
    assert 'id="agent_network-text">allowlist (GET/HEAD only): registry.npmjs.org, *.example.com</dd>' in html
    assert 'id="setup_network-text">full</dd>' in html
    assert '<option value="allowlist" selected>' in html and "registry.npmjs.org\n*.example.com</textarea>" in html
    assert "<code>NODE_ENV</code>" in html and '<pre class="wrap">test</pre>' in html
    assert "npm ci\necho &#39;&lt;b class=&#34;h9-injected&#34;&gt;" in html  # the script, as text
    assert "<b class" not in html and "<img src=x" not in html
    assert 'data-pattern="https://github.com/acme/*"' in html
    assert 'id="owners-form"' not in html  # only admins name owners
    assert 'id="owners-form"' in browser("root").page(f"/environments/{environment['id']}").text


def test_another_users_environment_is_not_found_and_the_api_refuses_their_changes(
    browser: Callable[..., Browser], environment: dict[str, Any]
) -> None:
    bob = browser("bob")
    for path in (f"/environments/{environment['id']}", "/environments/999", "/environments/x1",
                 f"/environments/{2**63}", "/environments/-1"):  # fmt: skip
        page = bob.page(path)
        assert page.status_code == 404 and "There is no environment" in page.text, path
        assert PATTERN not in page.text
    changed = bob.api("POST", "/v1/environments", json={"pattern": PATTERN, "variables": {"X": "1"}})
    assert changed.status_code == 403 and changed.json()["error"]["code"] == "environment_forbidden"
    secret = bob.api("PUT", f"/v1/environments/{environment['id']}/secrets/NPM_TOKEN", json={"value": "x" * 12})
    assert secret.status_code == 404
    assert browser("alice").api("GET", f"/v1/environments/{environment['id']}").json()["variables"]["NODE_ENV"] == (
        "test"
    )


def test_a_stored_policy_that_does_not_parse_is_said_not_a_server_error(
    browser: Callable[..., Browser], environment: dict[str, Any], sessions: sessionmaker[Session]
) -> None:
    with sessions.begin() as session:
        row = store.environments.get_environment(session, environment["id"])
        assert row is not None
        row.setup_network = {"mode": "sometimes"}
    page = browser("alice").page(f"/environments/{environment['id']}")
    assert page.status_code == 200 and "stored policy cannot be read; set it again" in page.text


def test_the_pages_need_a_session(browser: Callable[..., Browser]) -> None:
    for path in ("/environments", "/environments/1"):
        answer = browser().page(path)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/sign-in?next=/environments")


# --- in the browser ---------------------------------------------------------------------------------------------


def _assert_clean(visitor: Visitor) -> None:
    found = {name: values for name, values in probe(visitor.page).items() if values}
    assert not found and not visitor.errors, (found, visitor.errors)


def test_an_owner_changes_the_environment_through_the_forms_and_a_secret_never_comes_back(
    live: LiveServer,
    visitor: Callable[..., Visitor],
    tokens: dict[str, str],
    environment: dict[str, Any],
    browser: Callable[..., Browser],
    shots: Path,
) -> None:
    alice = visitor()
    alice.sign_in(live.base, tokens["alice"])
    page = alice.page
    page.goto(f"{live.base}/environments")
    page.get_by_role("link", name=PATTERN).click()
    expect(page.get_by_role("heading", name=f"Environment {PATTERN}")).to_be_visible()

    second = "ghp_" + secrets.token_hex(16)
    page.get_by_label("Secret name").fill("GH_TOKEN")
    page.get_by_label("Secret value").fill(second)
    page.get_by_role("button", name="Set secret").click()
    expect(page.locator("#environment-status")).to_have_text("Saved: secret GH_TOKEN.")
    expect(page.locator("#secrets")).to_contain_text("GH_TOKEN")
    assert page.get_by_label("Secret value").input_value() == ""
    for text in (page.content(), page.evaluate("document.documentElement.outerHTML")):
        assert second not in text and VALUE not in text

    page.get_by_label("Agent mode").select_option("allowlist")
    page.get_by_label("Agent allowed hosts").fill("pypi.org\nfiles.pythonhosted.org")
    page.get_by_label("Agent: GET and HEAD only").uncheck()
    page.get_by_role("button", name="Save agent network").click()
    expect(page.locator("#agent_network-text")).to_have_text("allowlist: pypi.org, files.pythonhosted.org")
    page.get_by_label("Set-up mode").select_option("none")
    page.get_by_role("button", name="Save set-up network").click()
    expect(page.locator("#setup_network-text")).to_have_text("none")

    page.get_by_label("Variable name").fill("CI")
    page.get_by_label("Variable value").fill("1")
    page.get_by_role("button", name="Set variable").click()
    expect(page.locator("#variables")).to_contain_text("CI")
    page.get_by_role("button", name="Remove variable BANNER").click()
    expect(page.locator("#environment-status")).to_have_text("Saved: variable BANNER removed.")
    page.get_by_role("textbox", name="Set-up script").fill("pip install -e .\n")
    page.get_by_role("button", name="Save script").click()
    expect(page.locator("#environment-status")).to_have_text("Saved: the set-up script.")
    page.get_by_role("button", name="Remove secret NPM_TOKEN").click()
    expect(page.locator("#environment-status")).to_have_text("Saved: secret NPM_TOKEN removed.")
    page.screenshot(path=shots / "environment.png", full_page=True)

    # A refusal is shown as the API said it (a name of Overnight's own), and changes nothing.
    page.get_by_label("Variable name").fill("OVERNIGHT_X")
    page.get_by_label("Variable value").fill("1")
    page.get_by_role("button", name="Set variable").click()
    expect(page.locator("#environment-status")).to_contain_text("OVERNIGHT_")
    _assert_clean(alice)

    stored = browser("alice").api("GET", f"/v1/environments/{environment['id']}").json()
    assert stored["variables"] == {"NODE_ENV": "test", "CI": "1"} and stored["setup_script"] == "pip install -e .\n"
    assert stored["agent_network"] == {"mode": "allowlist", "domains": ["pypi.org", "files.pythonhosted.org"],
                                       "read_only": False}  # fmt: skip
    assert stored["setup_network"] == {"mode": "none"} and [s["name"] for s in stored["secrets"]] == ["GH_TOKEN"]
    assert second not in str(stored)


def test_a_non_owner_cannot_open_or_change_the_environment_from_the_browser(
    live: LiveServer,
    visitor: Callable[..., Visitor],
    tokens: dict[str, str],
    environment: dict[str, Any],
    browser: Callable[..., Browser],
) -> None:
    bob = visitor()
    bob.sign_in(live.base, tokens["bob"])
    page = bob.page
    page.goto(f"{live.base}/environments/{environment['id']}")
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    assert PATTERN not in page.content()
    page.goto(f"{live.base}/environments")
    expect(page.locator("#no-environments")).to_be_visible()
    csrf = CSRF_META.search(page.content())
    assert csrf
    # With his own session and its CSRF token, the API still refuses him.
    answers = page.evaluate(
        """async ([id, pattern, csrf]) => {
          const headers = { "Content-Type": "application/json", "X-CSRF-Token": csrf };
          const call = async (method, url, body) =>
            (await fetch(url, { method, credentials: "same-origin", headers, body: JSON.stringify(body) })).status;
          return [await call("POST", "/v1/environments", { pattern, variables: { X: "1" } }),
                  await call("PUT", `/v1/environments/${id}/secrets/NPM_TOKEN`, { value: "stolen-value" }),
                  await call("DELETE", `/v1/environments/${id}/secrets/NPM_TOKEN`)];
        }""",
        [environment["id"], PATTERN, csrf.group(1)],
    )
    assert answers == [403, 404, 404]
    stored = browser("alice").api("GET", f"/v1/environments/{environment['id']}").json()
    assert "X" not in stored["variables"] and [s["name"] for s in stored["secrets"]] == ["NPM_TOKEN"]


def test_an_admin_creates_an_environment_from_the_list(
    live: LiveServer, visitor: Callable[..., Visitor], tokens: dict[str, str]
) -> None:
    root = visitor()
    root.sign_in(live.base, tokens["root"])
    page = root.page
    page.goto(f"{live.base}/environments")
    page.get_by_label("Repository pattern").fill("https://github.com/acme/widgets.git")
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_role("heading", name="Environment https://github.com/acme/widgets")).to_be_visible()
    assert re.search(r"/environments/\d+$", page.url)
    page.goto(f"{live.base}/environments")
    page.get_by_label("Repository pattern").fill("https://*.example.com/x")
    page.get_by_role("button", name="Create").click()
    expect(page.locator("#environment-status")).to_contain_text("host")
    _assert_clean(root)
