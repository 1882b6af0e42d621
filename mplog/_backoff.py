"""Sans-IO back-off policy: when to try connecting again.

An immutable value object (like urllib3's ``Retry``): ``retryStart`` seconds after the
first failure, multiplied by ``retryFactor`` after each further failure, capped at
``retryMax``, each delay spread by up to ``jitter`` (a fraction) with an injected random
source, so tests are repeatable and many programs restarting together do not reconnect in
lock-step. No clock here: callers add the delay to their own monotonic clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ._errors import ConfigError

__all__ = ["Backoff"]


@dataclass(frozen=True)
class Backoff:
    """Back-off schedule; ``delay(n)`` is the wait after the *n*-th consecutive failure."""

    start: float = 1.0
    factor: float = 2.0
    max: float = 30.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if not self.start > 0:
            raise ConfigError(f"retryStart must be > 0, got {self.start!r}")
        if not self.factor >= 1:
            raise ConfigError(f"retryFactor must be >= 1, got {self.factor!r}")
        if not self.max >= self.start:
            raise ConfigError(f"retryMax must be >= retryStart, got {self.max!r}")
        if not 0 <= self.jitter <= 1:
            raise ConfigError(f"jitter must be between 0 and 1, got {self.jitter!r}")

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after *failures* (>= 1) consecutive failed attempts."""
        if failures < 1:
            return 0.0
        base = self.start
        # Multiply step by step (not factor ** n) so a long outage cannot overflow.
        for _ in range(failures - 1):
            base *= self.factor
            if base >= self.max:
                base = self.max
                break
        if self.jitter:
            u = (rng or random).random()
            base *= 1.0 - self.jitter + 2.0 * self.jitter * u
        return float(base)
