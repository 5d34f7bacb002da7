"""`mesh ui` without a browser: the view's diffs and flags (pure), the actions it offers
(the protocol's own rule), and the server's refusals against a live broker."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from mesh.broker import Broker
from mesh.testing import Keys
from mesh.ui import PAGE_SIZE, Board, Query, Viewer, offered_actions
from mesh.ui.board import FINISHED_KEPT, FINISHED_SLACK
from protocol import AgentCard, Approve, Claim, Finish, ReviewPolicy, TaskRecord, apply, new_task

T0 = 1_700_000_000.0


def _task(n: int, **kwargs: object) -> TaskRecord:
    return new_task(
        task_id=f"t{n:05d}", capability="echo", instruction=f"task {n}", requester="me", now=T0 + n, **kwargs
    )  # type: ignore[arg-type]


def _working(record: TaskRecord, owner: str, at: float) -> TaskRecord:
    return apply(record, Claim(actor=owner), at)


def _viewer(**tasks: str) -> Viewer:
    return Viewer({"tasks": Query("tasks", **tasks), "agents": Query("agents")})  # type: ignore[arg-type]


def test_a_page_is_sent_its_rows_once_then_only_what_changed_on_it() -> None:
    board = Board()
    for n in range(3 * PAGE_SIZE):
        board.put_record(_task(n), 0)
    viewer = _viewer()
    first = viewer.update(board)
    assert first is not None
    assert len(first["tasks"]["rows"]) == PAGE_SIZE and first["tasks"]["total"] == 3 * PAGE_SIZE
    assert first["tasks"]["order"][0] == f"t{3 * PAGE_SIZE - 1:05d}"  # newest first
    assert viewer.update(board) is None  # nothing changed: nothing sent

    newest = board.record(f"t{3 * PAGE_SIZE - 1:05d}")
    assert newest is not None
    board.put_record(_working(newest, "agent-a", T0 + 500), 7)
    update = viewer.update(board)
    assert update is not None
    assert [r["id"] for r in update["tasks"]["rows"]] == [newest.id]
    assert update["tasks"]["rows"][0]["owner"] == "agent-a"

    oldest = board.record("t00000")  # on page 3: this page is not sent it
    assert oldest is not None
    board.put_record(_working(oldest, "agent-b", T0 + 501), 8)
    update = viewer.update(board)
    assert update is None or "tasks" not in update


def test_an_older_write_does_not_replace_a_newer_one() -> None:
    board = Board()
    record = _task(1)
    working = _working(record, "agent-a", T0 + 10)
    assert board.put_record(working, 5)
    assert not board.put_record(record, 3)
    assert board.record(record.id) == working


def test_a_read_after_an_outage_replaces_what_it_missed_but_not_what_came_later() -> None:
    board = Board()
    record = _task(1)
    working = _working(record, "agent-a", T0 + 10)
    board.put_record(record, 4)
    assert board.put_record(working, 0, fresh=True)  # written while we were away
    assert board.record(record.id) == working
    assert not board.put_record(record, 0, fresh=True)  # an older copy: kept the newer
    done = apply(working, Finish(actor="agent-a", epoch=working.epoch, result="ok"), T0 + 11)
    assert board.put_record(done, 9)
    assert board.summary()["tasks"] == {"done": 1}


def test_flags_are_mesh_tops_analysis_and_the_flagged_filter_shows_them() -> None:
    board = Board(stuck_after=30.0)
    stuck = _working(_task(1), "agent-a", T0 + 1)
    fine = _working(_task(2), "agent-a", T0 + 100)
    waiting = _task(3)  # open, and nobody serves echo with room: overloaded
    for i, r in enumerate((stuck, fine, waiting)):
        board.put_record(r, i + 1)
    board.put_card(AgentCard(id="agent-a", serves=("echo",), capacity=2, load=2), now=0.0)
    board.reflag(T0 + 110)
    viewer = _viewer(filter="flagged")
    update = viewer.update(board)
    assert update is not None
    flags = {r["id"]: r["flags"] for r in update["tasks"]["rows"]}
    assert flags == {stuck.id: ["stuck"], waiting.id: ["overloaded"]}
    assert update["summary"]["stuck"] == 1 and update["summary"]["overloaded"] == ["echo"]


def test_the_view_keeps_the_newest_finished_tasks_and_forgets_the_rest_in_batches() -> None:
    """Forgetting old finished tasks is one pass over the board per FINISHED_SLACK ends
    (not one per end: on a busy mesh, or a first picture of a bucket of tens of
    thousands of finished records, that pass on every end made the view quadratic)."""
    board = Board()
    ends = FINISHED_KEPT + FINISHED_SLACK
    for n in range(ends):
        done = msgspec.structs.replace(_task(n), state="done", updated=1000.0 + n)
        board.put_record(done, 1)
    assert len(board.tasks) == ends  # not over the slack yet: nothing forgotten
    board.put_record(msgspec.structs.replace(_task(ends), state="done", updated=1000.0 + ends), 1)
    kept = sorted(t.record.updated for t in board.tasks.values())
    assert len(kept) == FINISHED_KEPT and kept[0] == 1000.0 + ends + 1 - FINISHED_KEPT
    assert board.summary()["tasks"] == {"done": FINISHED_KEPT}, board.summary()


def test_a_card_not_written_for_three_heartbeats_leaves_the_view() -> None:
    board = Board()
    board.put_card(AgentCard(id="gone", heartbeat_s=2.0), now=100.0)
    board.put_card(AgentCard(id="here", heartbeat_s=2.0), now=100.0)
    board.put_card(AgentCard(id="here", heartbeat_s=2.0), now=106.0)  # the same card again: a heartbeat
    board.expire_cards(108.0)
    assert set(board.agents) == {"here"}


def _in_review(author: str = "author") -> TaskRecord:
    record = _working(_task(1, review=ReviewPolicy(quorum=1, capability="human.review")), author, T0 + 2)
    return apply(record, Finish(actor=author, epoch=record.epoch, result="42"), T0 + 3)


def test_the_page_offers_only_what_the_protocol_accepts() -> None:
    review = _in_review()
    assert review.state == "review"
    assert offered_actions(review, "human-ann", now=T0 + 4) == ["approve", "veto"]
    assert offered_actions(review, "author", now=T0 + 4) == []  # an author never reviews its own result
    assert offered_actions(_task(2), "human-ann", now=T0 + 4) == ["answer"]
    assert offered_actions(_working(_task(3), "agent-a", T0 + 4), "human-ann", now=T0 + 5) == []
    done = apply(review, Approve(actor="human-ann", epoch=review.epoch), T0 + 5)
    assert done.state == "done" and offered_actions(done, "human-bob", now=T0 + 6) == []
    late = _task(4, deadline=T0 + 10)
    assert offered_actions(late, "human-ann", now=T0 + 11) == []  # past its deadline a write only ends it


# --- the server ------------------------------------------------------------------------------


@contextlib.contextmanager
def _ui(broker: Broker, tmp_path: Path, env: dict[str, str] | None = None, *extra: str) -> Iterator[str]:
    """A `mesh ui` process; its URL."""
    with (tmp_path / "ui.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mesh", "ui", "--port", "0", "--server", broker.url, *extra],
            stdout=subprocess.PIPE,
            stderr=log,
            env={**os.environ, **(env or {})},
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert "mesh ui at" in line, (tmp_path / "ui.log").read_text()
        yield line.split("mesh ui at ", 1)[1].split()[0]
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()  # type: ignore[union-attr]


def _post(url: str, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url, data=b'{"text": ""}', method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.auth
def test_with_a_key_that_is_not_an_operators_the_view_is_read_only(broker: Broker, keys: Keys, tmp_path: Path) -> None:
    seed = keys.seed("viewer", "client")
    with _ui(broker, tmp_path, env={"MESH_NKEY": str(seed)}) as url:
        with urllib.request.urlopen(f"{url}api/config", timeout=10) as response:
            config = json.loads(response.read())
        assert config["actor"] is None and "operator" in config["read_only_reason"]
        status, body = _post(f"{url}api/inbox/abc123/approve", {"x-mesh-ui": "1"})
        assert status == 403 and "operator" in str(body["error"])


def test_an_action_without_the_pages_header_is_refused(broker: Broker, tmp_path: Path) -> None:
    with _ui(broker, tmp_path) as url:
        # what a form on another site could send: no custom header
        status, body = _post(f"{url}api/inbox/abc123/approve", {"content-type": "text/plain"})
        assert status == 403 and "x-mesh-ui" in str(body["error"])
        status, body = _post(f"{url}api/inbox/abc123/approve", {"x-mesh-ui": "1"})
        assert status == 404 and "abc123" in str(body["error"])  # with it: judged (no such task)


def test_a_busy_port_is_one_line(broker: Broker) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "mesh", "ui", "--port", str(port), "--server", broker.url],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in proc.stderr, proc.stderr
    assert "--port" in proc.stderr


def test_config_is_plain_json() -> None:
    from mesh.ui.server import UiConfig

    assert msgspec.to_builtins(UiConfig(actor=None, read_only_reason="why"))["actor"] is None


def test_with_a_token_the_view_serves_only_a_browser_that_was_given_it(broker: Broker, tmp_path: Path) -> None:
    import httpx

    token = "ui-token-0123456789abcdef"
    path = tmp_path / "token"
    path.write_text(token)
    path.chmod(0o600)
    with _ui(broker, tmp_path, None, "--host", "0.0.0.0", "--token-file", str(path)) as url:
        assert url.endswith(f"/?token={token}")  # what the operator opens once
        base = url.split("?", 1)[0].replace("0.0.0.0", "127.0.0.1")
        with httpx.Client(timeout=10) as stranger:
            for path_ in ("", "api/config", "api/stream", f"?token=not-{token}"):
                assert stranger.get(base + path_).status_code == 401, path_
            refused = stranger.post(f"{base}api/inbox/abc123/approve", headers={"x-mesh-ui": "1"}, content=b"{}")
            assert refused.status_code == 401
        with httpx.Client(timeout=10) as browser:
            opened = browser.get(f"{base}?token={token}")
            assert opened.status_code == 303 and opened.headers["location"] == "/"
            cookie = opened.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
            page = browser.get(base)  # the cookie from now on: no token in the URL
            assert page.status_code == 200 and "<html" in page.text.lower()
            assert browser.get(f"{base}api/config").json()["server"] == broker.url


async def test_the_token_check_refuses_garbage_without_failing() -> None:
    """Whatever the headers hold, a request without the token gets 401, never a crash."""
    from mesh.http_token import RequireToken

    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError("reached the app")

    guard = RequireToken(app, "t" * 20, cookie="mesh_ui_token")
    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    for headers in (
        [(b"cookie", b'mesh_ui_token="unterminated')],
        [(b"cookie", b"\x00\x01=;;;==; mesh_ui_token=" + b"\xff" * 30)],
        [(b"authorization", b"Bearer " + b"\xff" * 20)],
        [(b"cookie", b"mesh_ui_token=" + b"t" * 19)],
    ):
        sent.clear()
        scope = {"type": "http", "method": "GET", "path": "/", "query_string": b"token=%ff%00", "headers": headers}
        await guard(scope, None, send)
        assert sent[0]["status"] == 401, (headers, sent)
