"""Following the mesh into a :class:`~mesh.ui.board.Board`: the broker's republished
record writes (every accepted write of every task, core NATS), the ``created`` events
of tasks nobody claimed yet (they exist only in their work items), and the directory
bucket's changes. The first picture is read the way `mesh top` reads it
(:func:`mesh.top.read_mesh`), after the subscriptions are in place, so no write falls
between the two.
"""

from __future__ import annotations

import time

import anyio
import anyio.abc
import structlog

from protocol import Forged, RemoteProtocolError, decode_record

from ..bus import MeshError
from ..client import Mesh
from ..top import read_mesh
from .board import Board

__all__ = ["follow_mesh"]

log = structlog.get_logger("mesh.ui")

#: how often the flags are recomputed (stuck work depends on the clock, not only on writes)
REFLAG_S = 1.0


async def follow_mesh(mesh: Mesh, board: Board, *, task_status: anyio.abc.TaskStatus[None]) -> None:
    """Keep ``board`` current until cancelled; started once the first picture is in."""
    async with mesh.bus.follow_all() as writes, anyio.create_task_group() as tg:
        await tg.start(_follow_created, mesh, board)
        reading = await read_mesh(mesh)
        now = time.monotonic()
        for card in reading.agents:
            board.put_card(card, now)
        for record in reading.tasks:
            board.put_record(record, 0)
        board.not_read, board.unreadable = reading.not_read, reading.unreadable
        board.put_forged(reading.forged)
        board.reflag(time.time())
        tg.start_soon(_follow_directory, mesh, board)
        tg.start_soon(_reflag, board)
        tg.start_soon(_reread_after_reconnecting, mesh, board)
        task_status.started()
        while True:
            write = await writes.next(timeout=REFLAG_S)
            if write is None:
                continue
            revision, data, headers = write
            try:
                # Verified as read_mesh verifies (a mesh with identities). The key is the
                # one the record names: its signature covers the key, so a lie fails too.
                record = decode_record(data)
                key = mesh.names.task_key(record.id)
                record = await mesh.bus.verified(record.id, revision, data, headers)
            except Forged as exc:
                board.put_forged([f"{key} revision {revision}: {exc.why} (signed by {exc.signer or 'nobody'})"])
                continue
            except (RemoteProtocolError, MeshError):
                # its parties end an unreadable record; the next read lists it (and
                # a write whose check the broker did not answer)
                continue
            board.put_record(record, revision)


async def _follow_created(mesh: Mesh, board: Board, *, task_status: anyio.abc.TaskStatus[None]) -> None:
    events = mesh.events()
    task_status.started()
    async for event in events:
        if event.kind == "created" and event.record is not None:
            board.put_record(event.record, 0)


async def _follow_directory(mesh: Mesh, board: Board) -> None:
    """Follow the directory's writes; afresh after each reconnection (the watcher's
    consumer may not have survived the outage) and after an error."""
    while True:
        with anyio.CancelScope() as scope:

            async def restart_on_reconnect(scope: anyio.CancelScope = scope) -> None:
                await mesh.bus.reconnects.wait()
                scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(restart_on_reconnect)
                try:
                    async for agent_id, card in mesh.bus.directory_changes():
                        if card is None:
                            board.drop_card(agent_id)
                        else:
                            board.put_card(card, time.monotonic())
                except MeshError as exc:  # the broker went away: the connection comes back
                    log.warning("following the directory stopped; again in a second", error=str(exc))
                tg.cancel_scope.cancel()
        await anyio.sleep(1.0)


async def _reread_after_reconnecting(mesh: Mesh, board: Board) -> None:
    """Writes made while the connection was down were never republished to us: read
    the picture again after each reconnection."""
    while True:
        await mesh.bus.reconnects.wait()
        reading = await read_mesh(mesh)
        for record in reading.tasks:
            board.put_record(record, 0, fresh=True)
        board.not_read, board.unreadable = reading.not_read, reading.unreadable
        board.put_forged(reading.forged)


async def _reflag(board: Board) -> None:
    while True:
        await anyio.sleep(REFLAG_S)
        board.expire_cards(time.monotonic())
        board.reflag(time.time())
