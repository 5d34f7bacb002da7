"""`mesh ui` in a real browser: Debian's Chromium, headless, driven by Playwright
(which never downloads a browser here: it launches /usr/bin/chromium), against a live
mesh (a real nats-server, real agent processes, the real `mesh ui` process).

Each step saves a screenshot into the test's temp dir (kept by pytest; the path is
printed when a step fails)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from mesh.broker import Broker
from mesh.client import Mesh
from mesh.testing import AgentProcs
from protocol import ReviewPolicy

CHROMIUM = os.environ.get("MESH_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: how long the page may take to show what the mesh did (a row, a state)
SHOWN_MS = 20_000


def _chromium() -> str:
    path = shutil.which(CHROMIUM) or (CHROMIUM if Path(CHROMIUM).is_file() else None)
    if path is None:
        reason = f"no Chromium at {CHROMIUM}: install Debian's (apt-get install chromium); .ci/run tries to"
        print(f"SKIPPED: {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture
def ui(broker: Broker, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A `mesh ui` process on a free port; (its URL, its log)."""
    log = tmp_path / "ui.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mesh", "ui", "--port", "0", "--server", broker.url, "--as", "human-tester"],
            stdout=subprocess.PIPE,
            stderr=err,
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        if "mesh ui at" not in line:
            proc.wait(10)
            raise AssertionError(f"mesh ui did not start (exit {proc.returncode}): {line}\n{log.read_text()}")
        yield line.split("mesh ui at ", 1)[1].split()[0], log
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Any]:
    executable = _chromium()
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=SHOWN_MS)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield await browser.new_page(viewport={"width": 1400, "height": 1100})
        finally:
            await browser.close()


class Shots:
    """Numbered full-page screenshots in the test's temp dir."""

    def __init__(self, page: Any, directory: Path) -> None:
        self.page, self.directory, self.count = page, directory, 0
        directory.mkdir(exist_ok=True)

    async def take(self, name: str) -> None:
        self.count += 1
        await self.page.screenshot(path=str(self.directory / f"{self.count:02d}-{name}.png"), full_page=True)


async def test_the_page_follows_the_mesh_and_approves_from_the_inbox(
    broker: Broker,
    agent_procs: AgentProcs,
    mesh_client: Mesh,
    ui: tuple[str, Path],
    page: Any,
    tmp_path: Path,
) -> None:
    from playwright.async_api import expect

    url, log = ui
    shots = Shots(page, tmp_path / "screenshots")
    try:
        await page.goto(url)
        await expect(page.locator("#status")).to_have_text("live")
        await page.locator("#tasks-filter").select_option("all")  # finished tasks too

        # A task nobody serves yet waits open; an agent appears and does it.
        task = await mesh_client.submit("echo", "hello page", claim_timeout_s=60)
        state = page.locator(f'#tasks tr[data-id="{task.id}"] td.state')
        await expect(state).to_have_text("open")
        await shots.take("task-open")
        agent_procs.start("echo", ["echo"], kind="echo")
        await expect(page.locator('#agents tr[data-id="echo"]')).to_be_visible()
        await shots.take("agent-appeared")
        await expect(state).to_have_text("done")
        await expect(page.locator(f'#tasks tr[data-id="{task.id}"] td.owner')).to_have_text("echo")
        await shots.take("task-done")

        # A sloppy author is vetoed by a checker and reworks; the timeline shows it.
        agent_procs.start("author", ["answer"], kind="mesh.faults:Sloppy")
        agent_procs.start("checker", ["review"], kind="check")
        await agent_procs.ready(mesh_client)
        vetoed = await mesh_client.run(
            "answer",
            "Name the serialization module.",
            review=1,
            criteria="must mention: pickle",
            data={"wrong": "json, probably", "right": "pickle"},
        )
        assert vetoed.state == "done" and vetoed.reworks == 1
        row = page.locator(f'#tasks tr[data-id="{vetoed.id}"]')
        await expect(row.locator("td.reworks")).to_have_text("1")
        await expect(row.locator("td.state")).to_have_text("done")
        await row.click()
        veto = page.locator('#detail-events tr[data-kind="veto"]')
        await expect(veto).to_have_count(1)
        await expect(veto.locator("td.note")).to_contain_text("pickle")
        await expect(page.locator('#detail-events tr[data-kind="approve"]')).to_have_count(1)
        await expect(page.locator("#detail-tree .badge.veto")).to_have_count(1)
        await shots.take("veto-and-rework")

        # A result for a person to review: the inbox offers approve; a click approves it.
        waiting = await mesh_client.submit(
            "echo", "please check me", review=ReviewPolicy(quorum=1, capability="human.review")
        )
        item = page.locator(f'#inbox li[data-id="{waiting.id}"]')
        await expect(item.locator('button[data-action="approve"]')).to_be_visible()
        await expect(item.locator('button[data-action="answer"]')).to_have_count(0)  # not open: no answer
        await shots.take("inbox-item")
        await item.locator('button[data-action="approve"]').click()
        await expect(page.locator(f'#inbox-log li[data-id="{waiting.id}"]')).to_contain_text("is done")
        final = await mesh_client.wait(waiting)
        assert final.state == "done" and final.result == "please check me"
        assert [(v.reviewer, v.verdict) for v in final.votes] == [("human-tester", "approve")]
        await expect(page.locator(f'#inbox li[data-id="{waiting.id}"]')).to_have_count(0)
        await expect(page.locator(f'#tasks tr[data-id="{waiting.id}"] td.state')).to_have_text("done")
        await shots.take("approved")
    except BaseException:
        with_shot = f"screenshots so far: {shots.directory}"
        try:
            await shots.take("failure")
        except Exception as exc:  # the page itself may be what broke
            with_shot += f" (no screenshot of the failure: {exc})"
        print(with_shot)
        print(f"mesh ui log:\n{log.read_text()}")
        raise
