"""A task's images reach the model (issue 17 part 3): as OpenAI-style image_url parts (data URLs) beside the
text of the first user message, in the form mistral-common takes and decodes; trajectories and events keep a
SHA-256 reference, never the data; a compaction restates the task with its images; a model server without
vision fails the run with a reason that says so."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.base import ModelResponseError
from agent.budget import AgentConfig
from agent.client import ChatClient, LLMConfig
from agent.loop import Trajectory, run_agent
from agent.scripted import EXAMPLE_REPOSITORY, ScriptedCall, ScriptedModel, ScriptedModelServer, ScriptedTurn
from agent.tools import ToolContext
from overnight.events import TaskEvent
from overnight.images import TaskImageData, image_reference
from sandbox.base import SandboxSpec
from sandbox.docker import DockerBackend
from tests.images import GIF, png
from tests.mistral_validation import assert_valid_mistral_request

FINISH = ScriptedCall(name="finish", arguments={"summary": "done", "pr_title": "Match the design", "pr_body": "."})
IMAGES = [
    TaskImageData(media_type="image/png", data=png(40, 30), source="upload"),
    TaskImageData(media_type="image/gif", data=GIF, source="github", url="https://github.com/user-attachments/x"),
]


@pytest.fixture
def ctx(docker_backend: DockerBackend, new_workspace: Callable[..., Path]) -> Iterator[ToolContext]:
    workspace = new_workspace(docker_backend)
    for name, text in EXAMPLE_REPOSITORY.items():
        (workspace / name).write_text(text)
    sandbox = docker_backend.start(SandboxSpec(task_id="images", workspace=workspace))
    try:
        yield ToolContext(sandbox=sandbox, output_limit=4000, command_timeout=20)
    finally:
        sandbox.close()


def _run(
    server: ScriptedModelServer, ctx: ToolContext, turns: list[ScriptedTurn], config: AgentConfig | None = None
) -> tuple[Trajectory, list[TaskEvent]]:
    server.state.extend(turns)
    events: list[TaskEvent] = []
    trajectory = Trajectory()
    client = ChatClient(LLMConfig(base_url=server.base_url, model="mistral-medium-3.5", retries=0))
    run_agent(instruction="Make the page look like the pictures.", model=client, ctx=ctx,
              config=config or AgentConfig(), on_event=events.append, trajectory=trajectory, images=IMAGES)  # fmt: skip
    return trajectory, events


def test_the_scripted_model_receives_the_images_as_data_url_parts_of_the_first_user_message(
    scripted_model: ScriptedModelServer, ctx: ToolContext
) -> None:
    bash = ScriptedCall(name="bash", arguments={"command": "ls"})
    _run(scripted_model, ctx, [ScriptedTurn(tool_calls=[bash]), ScriptedTurn(tool_calls=[FINISH])])
    requests = scripted_model.state.requests
    user = requests[0]["messages"][1]
    assert user["role"] == "user" and isinstance(user["content"], list)
    text, *images = user["content"]
    assert text["type"] == "text" and "<task>\nMake the page look like the pictures.\n</task>" in text["text"]
    assert [part["type"] for part in images] == ["image_url", "image_url"]
    for part, image in zip(images, IMAGES, strict=True):
        header, payload = part["image_url"]["url"].split(",", 1)
        assert header == f"data:{image.media_type};base64" and base64.b64decode(payload) == image.data
    assert requests[1]["messages"][1] == user  # the history is append-only: the images stay in the prefix
    for body in requests:
        assert_valid_mistral_request(body)  # the validator, and each image decoded by mistral-common


def test_trajectories_and_events_name_images_by_sha256_and_never_hold_their_data(
    scripted_model: ScriptedModelServer, ctx: ToolContext
) -> None:
    trajectory, events = _run(scripted_model, ctx, [ScriptedTurn(tool_calls=[FINISH])])
    recorded = trajectory.messages[1]["content"]
    assert [part["image_url"]["url"] for part in recorded[1:]] == [
        image_reference(hashlib.sha256(image.data).hexdigest()) for image in IMAGES
    ]
    assert recorded[1]["media_type"] == "image/png"
    payload = base64.b64encode(IMAGES[0].data).decode()
    assert payload not in json.dumps(trajectory.messages)
    assert payload not in json.dumps([event.model_dump(mode="json") for event in events])
    # The model was sent the data all the same.
    assert payload in json.dumps(scripted_model.state.requests[0])


def test_a_compaction_restates_the_task_with_its_images(scripted_model: ScriptedModelServer, ctx: ToolContext) -> None:
    big = ScriptedCall(name="bash", arguments={"command": "seq 1 3000"})
    turns = [ScriptedTurn(tool_calls=[big]), ScriptedTurn(content="Summary: nothing edited yet."),
             ScriptedTurn(tool_calls=[FINISH])]  # fmt: skip
    trajectory, _ = _run(scripted_model, ctx, turns, AgentConfig(compact_threshold=2000, max_compactions=1))
    requests = scripted_model.state.requests
    after = requests[2]["messages"]
    assert [m["role"] for m in after] == ["system", "user"]
    assert "<compaction_summary>" in after[1]["content"][0]["text"]
    assert after[1]["content"][1:] == requests[0]["messages"][1]["content"][1:]
    compacted = [m for m in trajectory.messages if m.get("overnight_compaction")]
    assert compacted[0]["content"][1]["image_url"]["url"].startswith("overnight-image:sha256:")


def test_a_model_server_without_vision_fails_the_run_saying_the_images_were_refused(ctx: ToolContext) -> None:
    model = ScriptedModel([ScriptedTurn(tool_calls=[FINISH])], vision=False)
    with ScriptedModelServer(model) as server, pytest.raises(ModelResponseError) as failure:
        _run(server, ctx, [])
    message = str(failure.value)
    assert "At most 0 image(s)" in message and "without vision" in message and "overnight doctor" in message


def test_an_image_counts_as_a_bounded_number_of_prompt_tokens_not_its_base64(
    scripted_model: ScriptedModelServer, ctx: ToolContext
) -> None:
    """As vLLM counts an image's patches: a 600 KB screenshot does not look like 200k tokens of context (which
    would compact the run at once)."""
    heavy = TaskImageData(media_type="image/png", data=png(40, 30) + b"\0" * 600_000, source="upload")
    scripted_model.state.extend([ScriptedTurn(tool_calls=[FINISH])])
    trajectory = Trajectory()
    client = ChatClient(LLMConfig(base_url=scripted_model.base_url, model="mistral-medium-3.5", retries=0))
    run_agent(instruction="Look.", model=client, ctx=ctx, config=AgentConfig(), on_event=lambda event: None,
              trajectory=trajectory, images=[heavy])  # fmt: skip
    assert 1024 < trajectory.steps[0]["usage"]["prompt_tokens"] < 10_000
