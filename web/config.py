"""What the web app takes from the server's settings, read in one place."""

from __future__ import annotations

from dataclasses import dataclass

from overnight.settings import Settings


@dataclass(frozen=True, kw_only=True)
class WebConfig:
    price_input: float
    """Per million uncached prompt tokens (the agent's own budget uses the same prices)."""
    price_cached_input: float
    price_output: float
    max_steps: int
    """The step budget of a task that names none."""
    max_total_tokens: int
    max_cost: float | None
    github_base: str
    """https://github.com, or a GitHub Enterprise Server's address: where issue links point."""
    secure_cookies: bool
    """Mark cookies Secure even on a plain-HTTP request (the API behind a TLS-terminating proxy)."""
    images_max: int = 0
    """Images a task may carry (0: the server takes none, and the form has no image field)."""
    image_max_bytes: int = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> WebConfig:
        return cls(
            price_input=settings.agent.budget.price_input,
            price_cached_input=settings.agent.budget.price_cached_input,
            price_output=settings.agent.budget.price_output,
            max_steps=settings.agent.budget.max_steps,
            max_total_tokens=settings.agent.budget.max_total_tokens,
            max_cost=settings.agent.budget.max_cost,
            github_base=settings.github.git_base,
            secure_cookies=(settings.public_url or "").startswith("https://"),
            images_max=settings.images.max_per_task if settings.images.enabled else 0,
            image_max_bytes=settings.images.max_bytes,
        )

    @property
    def priced(self) -> bool:
        return any((self.price_input, self.price_cached_input, self.price_output))

    def cost(self, *, prompt: int, cached: int, completion: int) -> float | None:
        """Estimated cost at the configured prices, as the agent's budget counts it; None when unpriced."""
        if not self.priced:
            return None
        uncached = prompt - cached
        total = uncached * self.price_input + cached * self.price_cached_input + completion * self.price_output
        return total / 1_000_000
