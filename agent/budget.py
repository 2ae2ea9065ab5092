"""Budgets of one run: steps, wall time, tokens and estimated cost."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from agent.base import LimitsExceeded, Usage


@dataclass(kw_only=True, frozen=True)
class Budget:
    max_steps: int = 100
    max_wall_seconds: float = 3600
    max_total_tokens: int = 30_000_000
    """Prompt plus completion tokens over all model calls of the run."""
    max_cost: float | None = None
    """Estimated cost cap in the currency of the prices below; None for no cap."""
    price_input: float = 0.0
    """Price per million uncached prompt tokens."""
    price_cached_input: float = 0.0
    """Price per million prompt tokens served from the prefix cache."""
    price_output: float = 0.0
    """Price per million completion tokens."""


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
