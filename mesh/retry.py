"""Trying again: the one backoff the runtime uses when the broker is briefly away (a
restart, a cluster electing a leader, a reconnection) or a record is a moment from
existing.

An attempt that raises one of the errors named in ``retry_on`` is tried again after a
pause that doubles from ``first_s`` up to ``max_s``, until ``patience_s`` is spent, or
``attempts`` are made, or ``stop()`` says trying again is pointless (a closed
connection never comes back); then the last error is raised to the caller, who knows
what giving up means (a write becomes :class:`mesh.Lost`, a publish is logged as not
recorded). Any other error passes straight through.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import anyio

__all__ = ["Backoff", "BROKER_BACKOFF", "retry"]

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """The pauses between attempts: ``first_s``, doubling, at most ``max_s``."""

    first_s: float = 0.05
    max_s: float = 1.0

    def pauses(self) -> Iterator[float]:
        pause = self.first_s
        while True:
            yield pause
            pause = min(pause * 2, self.max_s)

    def attempts_within(self, pauses_s: float) -> int:
        """How many attempts fit before the pauses between them add up to ``pauses_s``:
        for a caller whose every attempt may itself wait out the broker's timeout, and
        whose patience is the time it spends waiting between them."""
        if not math.isfinite(pauses_s):
            raise ValueError(f"a finite time to pause is needed, not {pauses_s}")
        made, total = 1, 0.0
        for pause in self.pauses():
            if total >= pauses_s:
                return made
            total += pause
            made += 1
        raise AssertionError("unreachable: the pauses never end")  # pragma: no cover


#: the broker's usual outages last from a few milliseconds (a leader election) to a few
#: seconds (a restart): ask again soon, then about once a second
BROKER_BACKOFF = Backoff()


async def retry(
    attempt: Callable[[], Awaitable[T]],
    *,
    retry_on: type[Exception] | tuple[type[Exception], ...],
    patience_s: float = math.inf,
    attempts: int | None = None,
    backoff: Backoff = BROKER_BACKOFF,
    stop: Callable[[], bool] | None = None,
) -> T:
    """``attempt()``'s result, trying again after each error of a type in ``retry_on`` (see
    the module docstring). Patience is counted on the monotonic clock from the first
    attempt, pauses and attempts alike; a pause that would end past it is not taken."""
    started = time.monotonic()
    made = 0
    for pause in backoff.pauses():
        try:
            return await attempt()
        except retry_on:
            made += 1
            spent = time.monotonic() - started
            if (attempts is not None and made >= attempts) or spent + pause > patience_s or (stop and stop()):
                raise
        await anyio.sleep(pause)
    raise AssertionError("unreachable: the pauses never end")  # pragma: no cover
