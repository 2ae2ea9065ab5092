"""What one run may spend and do: its budgets (steps, wall time, tokens, estimated cost) and the loop's other
limits. The server's settings nest these types as they are (``OVERNIGHT_AGENT_*``, ``OVERNIGHT_PRICE_*``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass as config_dataclass

from agent.base import LimitsExceeded, Usage

_DOCUMENTED = ConfigDict(use_attribute_docstrings=True)


@config_dataclass(kw_only=True, frozen=True, config=_DOCUMENTED)
class Budget:
    max_steps: int = Field(default=100, gt=0)
    """Model calls one run may make before it fails with 'step budget exhausted'."""
    max_wall_seconds: float = Field(default=3600, gt=0)
    """Wall-clock seconds the run may take."""
    max_total_tokens: int = Field(default=30_000_000, gt=0)
    """Prompt plus completion tokens over all model calls of the run."""
    max_cost: float | None = Field(default=None, gt=0)
    """Estimated cost cap in the currency of the prices below; empty (None) for no cap."""
    price_input: float = Field(default=0.0, ge=0)
    """Price per million uncached prompt tokens (Mistral's API: 1.50 USD for Medium 3.5)."""
    price_cached_input: float = Field(default=0.0, ge=0)
    """Price per million prompt tokens served from the prefix cache (Mistral's API: 0.15)."""
    price_output: float = Field(default=0.0, ge=0)
    """Price per million completion tokens (Mistral's API: 7.50)."""


@config_dataclass(kw_only=True, config=_DOCUMENTED)
class AgentConfig:
    budget: Budget = field(default_factory=Budget)
    tool_output_limit: int = Field(default=16_000, gt=200)
    """Characters of one tool result kept (head and tail) before it goes back to the model."""
    command_timeout: float = Field(default=300, gt=0)
    """Seconds one command the model runs may take when it names no timeout (it may ask for up to four times as
    much)."""
    compact_threshold: int = Field(default=200_000, gt=1000)
    """Context tokens (prompt + completion of the last call) at which the history is compacted into a summary."""
    max_compactions: int = Field(default=1, ge=0)
    """Compactions one run may do; reaching the threshold again after them ends the run."""


@dataclass(kw_only=True)
class Spend:
    budget: Budget
    started: float = field(default_factory=time.monotonic)
    steps: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def cost(self) -> float:
        budget = self.budget
        uncached = self.prompt_tokens - self.cached_tokens
        return (
            uncached * budget.price_input
            + self.cached_tokens * budget.price_cached_input
            + self.completion_tokens * budget.price_output
        ) / 1_000_000

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining_seconds(self) -> float:
        return max(self.budget.max_wall_seconds - self.elapsed, 0.0)

    def add(self, usage: Usage) -> None:
        self.prompt_tokens += usage.prompt_tokens
        self.cached_tokens += usage.cached_tokens
        self.completion_tokens += usage.completion_tokens

    def check_before_step(self) -> None:
        if self.steps >= self.budget.max_steps:
            raise LimitsExceeded(
                f"step budget exhausted ({self.budget.max_steps} steps) before the model called finish"
            )
        if self.elapsed >= self.budget.max_wall_seconds:
            raise LimitsExceeded(f"wall-time budget exhausted ({self.budget.max_wall_seconds:g} s)")

    def check_after_call(self) -> None:
        if self.total_tokens > self.budget.max_total_tokens:
            raise LimitsExceeded(
                f"token budget exhausted ({self.total_tokens} of {self.budget.max_total_tokens} tokens)"
            )
        if self.budget.max_cost is not None and self.cost > self.budget.max_cost:
            raise LimitsExceeded(f"cost budget exhausted (estimated {self.cost:.2f} of {self.budget.max_cost:.2f})")
