"""The one backoff of the runtime (mesh/retry.py): which errors it tries again, when it
gives up, and that it gives up with the caller's error, not one of its own."""

from __future__ import annotations

import time

import pytest

from mesh.bus import Conflict, NotFound, Unavailable
from mesh.retry import Backoff, retry

QUICK = Backoff(first_s=0.001, max_s=0.004)


class Flaky:
    """Fails ``failures`` times with ``error``, then returns how many calls it took."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    async def __call__(self) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return self.calls


def test_pauses_double_up_to_their_cap() -> None:
    pauses = Backoff(first_s=0.05, max_s=1.0).pauses()
    assert [next(pauses) for _ in range(8)] == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]


def test_attempts_within_counts_only_the_pauses() -> None:
    backoff = Backoff(first_s=0.05, max_s=1.0)
    assert backoff.attempts_within(0.0) == 1
    assert backoff.attempts_within(0.05) == 2
    # 0.05 + 0.1 + 0.2 + 0.4 + 0.8 = 1.55 s, then 1 s each: 14 pauses reach 10 s.
    assert backoff.attempts_within(10.0) == 15
    with pytest.raises(ValueError, match="finite"):
        backoff.attempts_within(float("inf"))


async def test_a_passing_error_is_tried_again_until_the_attempt_succeeds() -> None:
    flaky = Flaky(3, Unavailable("broker away"))
    assert await retry(flaky, retry_on=Unavailable, backoff=QUICK) == 4


async def test_other_errors_are_not_tried_again() -> None:
    flaky = Flaky(3, Conflict("someone wrote first"))
    with pytest.raises(Conflict):
        await retry(flaky, retry_on=(Unavailable, NotFound), backoff=QUICK)
    assert flaky.calls == 1


async def test_it_gives_up_after_its_attempts_with_the_last_error() -> None:
    flaky = Flaky(100, NotFound("not yet"))
    with pytest.raises(NotFound, match="not yet"):
        await retry(flaky, retry_on=NotFound, attempts=5, backoff=QUICK)
    assert flaky.calls == 5


async def test_it_gives_up_when_its_patience_is_spent() -> None:
    flaky = Flaky(10**6, Unavailable("broker away"))
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await retry(flaky, retry_on=Unavailable, patience_s=0.05, backoff=Backoff(first_s=0.01, max_s=0.01))
    took = time.monotonic() - started
    # It never starts a pause that would end past its patience.
    assert took < 0.05 + 0.04 and 2 <= flaky.calls <= 6


async def test_it_stops_at_once_when_told_trying_again_is_pointless() -> None:
    flaky = Flaky(100, Unavailable("connection closed"))
    with pytest.raises(Unavailable):
        await retry(flaky, retry_on=Unavailable, stop=lambda: flaky.calls >= 2, backoff=QUICK)
    assert flaky.calls == 2
