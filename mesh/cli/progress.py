"""Progress where work is long: the status line of `mesh submit --wait` and the
arrivals `mesh up` reports.

On a terminal the status line is rewritten in place (and its elapsed time ticks); when
stderr is a pipe or a file, a plain line is written each time the state, the owner or
the progress note changes, so a log reads as a history."""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import IO, TYPE_CHECKING

from protocol import TaskRecord

from . import one_line

if TYPE_CHECKING:
    from ..client import Mesh

__all__ = ["StatusLine", "status_text", "report_arrivals"]


def status_text(record: TaskRecord, elapsed_s: float) -> str:
    """``  1.2s  working   owner writer-1  step 3/10``: state, owner, last progress note, elapsed."""
    parts = [f"{elapsed_s:6.1f}s", f"{record.state:<9}"]
    if record.owner:
        parts.append(f"owner {record.owner}")
    if record.state == "review" and record.review is not None:
        approvals = sum(v.verdict == "approve" and v.round == record.reworks for v in record.votes)
        parts.append(f"review {approvals}/{record.review.quorum}")
    if record.progress:
        parts.append(record.progress)
    # Everything an agent wrote is shown escaped: a progress note cannot redraw the terminal.
    return one_line("  ".join(parts)).rstrip()


class StatusLine:
    """The live status of one task on ``stream`` (stderr)."""

    def __init__(self, stream: IO[str] | None = None, *, started: float | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = time.monotonic() if started is None else started
        self.record: TaskRecord | None = None
        self._said: tuple[str, str | None, str] | None = None
        self._drawn = False

    def update(self, record: TaskRecord) -> None:
        self.record = record
        key = (record.state, record.owner, record.progress)
        if self.tty:
            self.draw()
        elif key != self._said:
            self.stream.write(status_text(record, time.monotonic() - self.started) + "\n")
            self.stream.flush()
        self._said = key

    def draw(self) -> None:
        """Rewrite the line in place (a terminal only): also what the ticker calls."""
        if not self.tty or self.record is None:
            return
        width = shutil.get_terminal_size((80, 24)).columns - 1
        text = status_text(self.record, time.monotonic() - self.started)[:width]
        self.stream.write("\r\x1b[2K" + text)
        self.stream.flush()
        self._drawn = True

    def finish(self, record: TaskRecord) -> None:
        """The final status, left on its own line (results follow on stdout)."""
        if self.tty:
            self.clear()
            self.stream.write(status_text(record, time.monotonic() - self.started) + "\n")
            self.stream.flush()
        else:
            self.update(record)

    def clear(self) -> None:
        """Take the line off the terminal (before other output, and at the end)."""
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
            self._drawn = False


async def report_arrivals(
    expected: list[str],
    connect: Callable[[], Awaitable[Mesh]],
    *,
    stop: threading.Event,
    say: Callable[[str], None],
    poll_s: float = 0.25,
) -> None:
    """Say each agent of ``expected`` as its card appears in the directory, ``agent
    writer up (1/4)``, until all are up or ``stop`` is set. The directory is
    informative: if it cannot be read, say so once and stop reporting (the org runs on)."""
    import anyio

    from ..bus import MeshError

    started = time.monotonic()
    up: list[str] = []
    try:
        mesh = await connect()
    except MeshError as exc:
        say(f"cannot follow the agents coming up ({one_line(str(exc))}); see `mesh agents`")
        return
    try:
        while not stop.is_set():
            try:
                present = {card.id for card in await mesh.agents()}
            except MeshError as exc:
                say(f"cannot follow the agents coming up ({one_line(str(exc))}); see `mesh agents`")
                return
            for agent_id in expected:
                if agent_id in present and agent_id not in up:
                    up.append(agent_id)
                    say(f"agent {agent_id} up ({len(up)}/{len(expected)})")
            if len(up) == len(expected):
                say(f"all {len(expected)} agents up in {time.monotonic() - started:.1f}s")
                return
            await anyio.sleep(poll_s)
    finally:
        await mesh.close()
