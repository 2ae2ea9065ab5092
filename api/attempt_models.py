"""Wire models of best-of-N attempts (``store/bestof.py``): the field a task is created with, the fields every task
shows, and what ``GET /v1/tasks/{id}/attempts`` answers."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from store.bestof import MAX_ATTEMPTS


class AttemptsField(BaseModel):
    """Of ``TaskCreate``."""

    attempts: int = Field(
        default=1,
        ge=1,
        le=MAX_ATTEMPTS,
        description=f"Best-of-N: run the task this many times at once (1 to {MAX_ATTEMPTS}), each attempt in its own "
        "sandbox with its own patch, then rank them by tests passing and patch size; the best one's patch is the "
        "task's. 1: the task runs once.",
    )


class AttemptsPublicFields(BaseModel):
    """Of ``TaskPublic``."""

    attempts: int = Field(default=1, description="How many attempts run this task (1: it runs itself).")
    attempt_of: str | None = Field(default=None, description="On an attempt task: the task it is an attempt of.")
    attempt_index: int | None = Field(default=None, description="On an attempt task: its number K, from 1 to N.")


class AttemptPublic(BaseModel):
    """One attempt of a task: how it ended, and where the ranking put it (once every attempt ended)."""

    model_config = ConfigDict(from_attributes=True)

    attempt: int = Field(description="K, from 1 to N.")
    task_id: str = Field(description="The attempt task's own id (its events, patch and trajectory).")
    state: str
    failure_reason: str | None
    rank: int | None = Field(description="1 is the best; null until the attempts are ranked.")
    best: bool = Field(description="Its patch is the task's.")
    reason: str | None = Field(description='Why it ranks so: "tests pass; 1.2 KB", "tests fail", "no patch: ...".')
    test_command: str | None = Field(description="What the check ran on its patch in a fresh sandbox.")
    passed: bool | None = Field(description="Whether that passed; null: not checked (no test command, or no patch).")
    exit_code: int | None
    output_tail: str | None = Field(description="The end of the check's output.")
    patch_bytes: int | None = Field(description="Size of its diff; null: it left no patch.")
    files_changed: int | None
    steps: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    sandbox_seconds: float
    started_at: datetime | None
    finished_at: datetime | None


class AttemptList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"task_id": "3f2a9c1e7b4d5a60", "state": "succeeded", "ranked": True, "best": 2, "attempts": [
                    {"attempt": 1, "task_id": "a1", "state": "succeeded", "failure_reason": None, "rank": 2,
                     "best": False, "reason": "tests fail; 310 B", "test_command": "python -m pytest -q",
                     "passed": False, "exit_code": 1, "output_tail": "1 failed", "patch_bytes": 310,
                     "files_changed": 1, "steps": 6, "prompt_tokens": 52000, "cached_tokens": 48000,
                     "completion_tokens": 900, "sandbox_seconds": 4.1, "started_at": "2026-11-30T01:00:01Z",
                     "finished_at": "2026-11-30T01:03:10Z"},
                ]},
            ]
        },
    )  # fmt: skip

    task_id: str
    state: str = Field(description="The task's state: running while any attempt runs and until they are ranked.")
    ranked: bool = Field(description="Every attempt ended and the ranking is stored.")
    best: int | None = Field(description="K of the attempt whose patch the task took; null: none (yet).")
    checked: bool | None = Field(
        default=None, description="Whether the patches were checked by tests (false: cancelled); null until ranked."
    )
    attempts: list[AttemptPublic] = Field(description="By K.")
