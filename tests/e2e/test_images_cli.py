"""Images end to end (issue 17 part 3): `overnight submit --image` sends the files as multipart/form-data to the
API of `overnight up`, the worker hands them to the agent, and the scripted model receives each as an image_url
part of the first user message, byte for byte; the task's events name them by SHA-256 only. A file that is not
an image is refused at submit with the rule it broke."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest

from agent.scripted import ScriptedCall, ScriptedModelServer, ScriptedTurn
from tests.e2e.conftest import cli, overnight_up
from tests.images import GIF, png
from tests.mistral_validation import assert_valid_mistral_request

FINISH = ScriptedCall(name="finish", arguments={"summary": "looked", "pr_title": "Nothing to change", "pr_body": "."})


@pytest.fixture
def server(
    tmp_path: Path, scripted_model: ScriptedModelServer, redis_url: str, docker_client: docker.DockerClient
) -> Iterator[dict[str, str]]:
    with overnight_up(tmp_path, scripted_model) as env:
        yield env


def test_submit_with_images_reaches_the_model_as_image_parts(
    server: dict[str, str], scripted_model: ScriptedModelServer, buggy_repo: Path, tmp_path: Path
) -> None:
    shot, logo = tmp_path / "shot.png", tmp_path / "logo.gif"
    shot.write_bytes(png(32, 20))
    logo.write_bytes(GIF)
    scripted_model.state.extend([ScriptedTurn(content="I see the pictures.", tool_calls=[FINISH])])
    result = cli(server, "submit", "--repo", str(buggy_repo), "--image", str(shot), "--image", str(logo), "--wait",
                 "--json", "Make the page match the screenshot")  # fmt: skip
    assert result.returncode == 0, result.stderr + Path(server["log"]).read_text()[-3000:]
    task = json.loads(result.stdout)
    assert task["state"] == "succeeded"
    [request] = scripted_model.state.requests
    user = request["messages"][1]
    assert user["content"][0]["type"] == "text" and "Make the page match the screenshot" in user["content"][0]["text"]
    urls = [part["image_url"]["url"] for part in user["content"][1:]]
    assert urls == [f"data:image/png;base64,{base64.b64encode(shot.read_bytes()).decode()}",
                    f"data:image/gif;base64,{base64.b64encode(GIF).decode()}"]  # fmt: skip
    assert_valid_mistral_request(request)
    headers = {"Authorization": f"Bearer {server['token']}"}
    events = httpx.get(f"{server['OVERNIGHT_SERVER']}/v1/tasks/{task['id']}/events", headers=headers).json()["events"]
    [images] = [event for event in events if event["type"] == "images"]
    assert [image["sha256"] for image in images["data"]["images"]] == [
        hashlib.sha256(shot.read_bytes()).hexdigest(), hashlib.sha256(GIF).hexdigest()
    ]  # fmt: skip
    trajectory = httpx.get(f"{server['OVERNIGHT_SERVER']}/v1/tasks/{task['id']}/trajectory", headers=headers).json()
    assert base64.b64encode(shot.read_bytes()).decode() not in json.dumps(trajectory)


def test_submit_with_a_file_that_is_not_an_image_is_refused_naming_the_rule(
    server: dict[str, str], buggy_repo: Path, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.png"
    notes.write_text("not a picture at all")
    result = cli(server, "submit", "--repo", str(buggy_repo), "--image", str(notes), "Fix it")
    assert result.returncode == 2
    assert "not a PNG, JPEG, GIF or WebP image" in result.stderr and "notes.png" in result.stderr
    listed = cli(server, "list", "--json")
    assert json.loads(listed.stdout) == []  # nothing was filed
