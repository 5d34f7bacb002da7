"""The ``mesh`` commands. Errors a user can fix become :class:`UserError` with a
message saying what was wrong and what to do.

Each command imports what it needs when it runs, so none pays for another's: ``mesh
agent run`` loads the agent runtime but not the embedded broker, the renderers or
what other commands use (tests/test_cli.py checks it; bench/footprint.py measures)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ssl

    from ..client import Mesh

__all__ = ["UserError", "dispatch"]


class UserError(Exception):
    pass


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        # A task group wraps what one of its tasks raised (an agent that cannot reach
        # the broker): judge the one error inside, not the group.
        inner: Exception = exc
        while isinstance(inner, ExceptionGroup) and len(inner.exceptions) == 1:
            inner = inner.exceptions[0]
        message = _user_message(inner)
        if message is None:
            raise
        raise UserError(message) from None


def _user_message(exc: Exception) -> str | None:
    """What to tell the user about an error they can fix, or None (a bug: let it show).

    The error classes are looked up among the modules already imported rather than
    imported here: an exception of a module that was never imported was never raised,
    and importing the runtime to check would slow every error path down."""

    def classes(module: str, *names: str) -> tuple[type[BaseException], ...]:
        loaded = sys.modules.get(module)
        return tuple(cls for name in names if (cls := getattr(loaded, name, None)) is not None)

    if isinstance(
        exc,
        classes("mesh.briefs", "BriefError")
        + classes("mesh.kinds", "KindError")
        + classes("mesh.broker", "BrokerNotFound", "BrokerFailed")
        + classes("mesh.bus", "Unreachable")
        + classes("mesh.settings", "SettingsError")
        + classes("mesh.identity", "IdentityError")
        + classes("mesh.http_token", "TokenError")
        + classes("protocol", "InvalidName"),
    ):
        return str(exc)
    if isinstance(exc, classes("protocol", "RemoteProtocolError")):
        return f"the mesh holds something that is not valid protocol: {exc}"
    if isinstance(exc, classes("mesh.bus", "NotFound")):
        return f"no such task: {exc} (ids are printed by `mesh submit`; see `mesh watch`)"
    if isinstance(exc, classes("protocol", "LocalProtocolError") + classes("mesh.bus", "MeshError")):
        return str(exc)
    return None


def dispatch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    table: dict[str, Callable[[argparse.Namespace], int]] = {
        "demo": cmd_demo,
        "broker": cmd_broker,
        "setup": cmd_setup,
        "agent": cmd_agent,
        "up": cmd_up,
        "submit": cmd_submit,
        "agents": cmd_agents,
        "watch": cmd_watch,
        "trace": cmd_trace,
        "cancel": cmd_cancel,
        "brief": cmd_brief,
        "kinds": cmd_kinds,
        "inbox": cmd_inbox,
        "top": cmd_top,
        "keys": cmd_keys,
        "auth": cmd_auth,
        "mcp": cmd_mcp,
        "a2a": cmd_a2a,
        "bench": cmd_bench,
        "otel": cmd_otel,
        "ui": cmd_ui,
    }
    if args.command == "agent" and args.agent_command is None:
        parser.parse_args(["agent", "--help"])
    if args.command == "a2a" and args.a2a_command is None:
        parser.parse_args(["a2a", "--help"])
    if args.command == "bench" and args.bench_command is None:
        parser.parse_args(["bench", "--help"])
    if args.command == "keys" and args.keys_command is None:
        parser.parse_args(["keys", "--help"])
    if args.command == "auth" and args.auth_command is None:
        parser.parse_args(["auth", "--help"])
    if getattr(args, "nkey", None) and args.command != "broker":
        # One place for the key: every connection of this process (and the setting's
        # checks) reads it from the environment, as it would MESH_NKEY.
        os.environ["MESH_NKEY"] = args.nkey
    if args.command == "brief" and args.brief_command is None:
        parser.parse_args(["brief", "--help"])
    if args.command == "otel" and args.otel_command is None:
        parser.parse_args(["otel", "--help"])
    if args.command == "mcp" and args.mcp_command is None:
        parser.parse_args(["mcp", "--help"])
    with user_errors():
        return table[args.command](args)


def _run(fn: Callable[..., Awaitable[int]], *args: Any) -> int:
    import anyio

    return anyio.run(fn, *args)


async def _mesh(args: argparse.Namespace) -> Mesh:
    from protocol import Names

    from ..client import Mesh, default_server

    return await Mesh.connect(args.server or default_server(), names=Names(args.prefix))


# --- demo, broker, agents as processes ------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from importlib.metadata import entry_points

    # The demo lives with the agents it runs (agents/demo.py), published under this
    # group so that the runtime never imports agents/ by name.
    group = "agent_mesh.demo"
    found = {ep.name: ep for ep in entry_points(group=group)}
    if args.name not in found:
        have = ", ".join(sorted(found)) or "none is installed"
        raise UserError(f"no demo {args.name!r} in the entry-point group {group} ({have})")
    run_demo: Callable[..., int] = found[args.name].load()
    return run_demo(keep_logs=args.keep_logs)


def cmd_broker(args: argparse.Namespace) -> int:
    from ..broker import Broker
    from ..settings import client_tls

    if (args.tls_cert is None) != (args.tls_key is None):
        raise UserError("TLS needs both --tls-cert FILE and --tls-key FILE")
    store = args.store or str(Path("mesh-data").absolute())
    if args.auth:
        from ..identity import ensure_keys, list_keys, load_seed

        if args.nkey:
            if load_seed(args.nkey).role != "operator":
                raise UserError(f"--nkey {args.nkey}: the broker's setup needs an operator key")
            os.environ["MESH_NKEY"] = args.nkey
        else:  # the setup below connects like any party: as the local operator
            os.environ["MESH_NKEY"] = str(ensure_keys(args.auth, {"operator": "operator"})["operator"])
        keys = list_keys(args.auth)
    broker = Broker(
        host=args.host,
        port=args.port,
        http_port=args.http_port,
        store=store,
        config=args.config,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        auth=args.auth,
        prefix=args.prefix,
    )
    broker.start(log=None)
    if args.auth:
        print(f"authorization on: {len(keys)} keys from {args.auth} ({_roles(keys)})", file=sys.stderr)
    else:  # said once it runs: a broker that failed to start is open to no one
        print(
            f"mesh broker: WARNING: no --auth, so this broker is OPEN: anyone who can reach {args.host}:{args.port} "
            "can read, forge and delete every task, card and stream (see docs/SECURITY.md)",
            file=sys.stderr,
        )
    print(
        f"nats-server (JetStream, store {store}) on {broker.url}; monitoring on {broker.monitor_url}", file=sys.stderr
    )
    try:
        # Our own child, checked against its own certificate: the CA may be elsewhere,
        # and the certificate may name the machine rather than the address we dial.
        _run(_setup, broker.url, args, client_tls(args.tls_cert, pinned=True))
    except BaseException:
        broker.stop()
        raise
    key = (" --nkey DIR/NAME.nk" if args.auth else "") + (" --tls-ca CA.pem" if args.tls_cert else "")
    try:
        assert broker.process is not None
        with _stop_signals() as stop:
            # Said once a stop is handled: a signal right after this line stops the broker too
            print(f"agents connect with: mesh agent run BRIEF.toml --server {broker.url}{key}", file=sys.stderr)
            while (code := broker.process.poll()) is None:
                if stop.wait(0.5):
                    return 0
        print(f"nats-server exited with code {code}", file=sys.stderr)
        return code or 1
    finally:
        broker.stop()


def _roles(keys: list[Any]) -> str:
    counts: dict[str, int] = {}
    for key in keys:
        counts[key.role] = counts.get(key.role, 0) + 1
    return ", ".join(f"{n} {role}{'s' if n > 1 else ''}" for role, n in sorted(counts.items())) or "none"


RETENTION_MIN_S = 120.0
RETENTION_MAX_S = 36500 * 86400.0  # (settings.MAX_DURATION_S: JetStream's 64-bit nanoseconds)


def _need_operator(what: str) -> None:
    """Refuse, before connecting, what the broker's permissions would refuse a
    non-operator key anyway (silently: a refused request is never answered)."""
    seed = os.environ.get("MESH_NKEY")
    if not seed:
        return
    from ..identity import load_seed

    identity = load_seed(seed)
    if identity.role not in (None, "operator"):
        raise UserError(
            f"{what} needs an operator's key, and {seed} is a{'n' if identity.role == 'agent' else ''} "
            f"{identity.role}'s: pass --nkey with an operator key (`mesh keys new NAME --role operator`)"
        )


def cmd_setup(args: argparse.Namespace) -> int:
    from ..defaults import default_server

    if args.retention is not None or args.retention_bytes is not None:
        _need_operator("changing the retention")

    return _run(_setup, args.server or default_server(), args)


async def _setup(server: str, args: argparse.Namespace, tls: ssl.SSLContext | None = None) -> int:
    """Create missing resources with the settings given (flags over the environment)
    and apply the retention asked for to the events history, saying what it is.
    ``tls``: how to verify the broker, if not as the settings say."""
    import dataclasses

    from protocol import Names

    from ..bus import Bus, Refused
    from ..settings import Settings

    settings = Settings.from_env()
    changes: dict[str, Any] = {}
    if args.retention is not None:
        # JetStream refuses a history shorter than its duplicates window (2 minutes), and
        # keeps ages in 64-bit nanoseconds (292 years).
        if not RETENTION_MIN_S <= args.retention <= RETENTION_MAX_S:
            raise UserError(f"--retention {args.retention:g}s: must be from 2 minutes to 100 years (2m to 36500d)")
        changes["retention_s"] = args.retention
    if args.retention_bytes is not None:
        changes["retention_bytes"] = args.retention_bytes
    if getattr(args, "replicas", None) is not None:
        changes["replicas"] = args.replicas
    settings = dataclasses.replace(settings, **changes)
    try:
        bus = await Bus.connect(server, Names(args.prefix), agent="mesh-setup", settings=settings, tls=tls)
        try:
            kept = await bus.apply_retention(
                retention_s=changes.get("retention_s"), retention_bytes=changes.get("retention_bytes")
            )
        finally:
            await bus.close()
    except Refused as exc:  # e.g. more replicas than the cluster has nodes
        raise UserError(f"the broker refused the mesh's streams and buckets: {exc}") from None
    cap = f", at most {kept.retention_bytes} bytes" if kept.retention_bytes else ""
    print(
        f"mesh {args.prefix!r} is set up on {server}: finished work stays readable for "
        f"{kept.retention_s / 86400:g} days{cap}",
        file=sys.stderr,
    )
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    if args.agent_command == "run":
        from ..defaults import default_server

        server = args.server or default_server()
        _import_nats_without_websockets(server)
        import anyio

        from protocol import validate_agent_id

        from ..process import run_agent

        if args.id is not None:
            validate_agent_id(args.id)  # said before the brief is read or the broker dialled
        key_name = None
        if os.environ.get("MESH_NKEY"):
            from ..identity import load_seed

            identity = load_seed(os.environ["MESH_NKEY"])
            if args.id is not None:
                identity.check_id(args.id)
            key_name = identity.name if identity.role != "operator" else None
        brief = _brief_or_org_member(args.brief, args.agent)
        # One id, one process: the same brief run on two machines must not make two
        # agents under one name (the second would be refused at start). `mesh up`
        # gives its agents readable ids of its own. With a key, the id is the key's.
        agent_id = args.id or key_name or f"{brief.name[:59]}-{secrets.token_hex(2)}"  # ids are at most 64 chars
        anyio.run(lambda: run_agent(brief, server=server, agent_id=agent_id, prefix=args.prefix))
        return 0

    import msgspec

    _need_operator(f"`mesh agent {args.agent_command}`")

    async def control() -> int:
        mesh = await _mesh(args)
        try:
            reply = await mesh.control(args.id, "drain" if args.agent_command == "drain" else "status")
        finally:
            await mesh.close()
        print(json.dumps(msgspec.to_builtins(reply)))
        return 0

    return _run(control)


def _import_nats_without_websockets(server: str) -> None:
    """Import nats-py without its websocket transport when no server URL needs it.

    nats-py imports aiohttp (for ``ws://`` only) whenever it is installed, and the llm
    extra installs it: about 150 ms and 5 MiB on every agent's start, most agents never
    using it. nats-py guards that import with ``except ImportError``; an entry of None in
    ``sys.modules`` makes it fail on purpose. The entry is removed at once, so a model
    call (litellm) can still import aiohttp later."""
    if "nats" in sys.modules or "aiohttp" in sys.modules:
        return
    if any(url.strip().lower().startswith(("ws://", "wss://")) for url in server.split(",")):
        return
    sys.modules["aiohttp"] = None  # type: ignore[assignment]
    try:
        import nats.aio.client  # noqa: F401
    finally:
        del sys.modules["aiohttp"]


def _brief_or_org_member(path: str, name: str | None) -> Any:
    from ..briefs import load_brief, load_org

    if name is None:
        return load_brief(path)
    _, briefs = load_org(path)
    for brief, _ in briefs:
        if brief.name == name:
            return brief
    raise UserError(f"{path}: no agent named {name!r}; agents are {', '.join(b.name for b, _ in briefs)}")


def _org_bindings(briefs: list[Any]) -> dict[str, tuple[str, ...]]:
    """What each brief's key is bound to with `mesh up --bind`: the capabilities it
    serves, and those below them that the org names anywhere (served, delegated to,
    reviewing, escalated to), so generalists still take their specialists' overflow."""
    named: set[str] = set()
    for brief in briefs:
        named |= set(brief.serves) | set(brief.delegates)
        for policy in (brief.review, brief.review_results):
            if policy is not None:
                named |= {policy.capability} | ({policy.escalate_to} if policy.escalate_to else set())
    return {
        brief.name: tuple(
            dict.fromkeys([*brief.serves, *sorted(c for c in named for s in brief.serves if c.startswith(f"{s}."))])
        )
        for brief in briefs
    }


def cmd_up(args: argparse.Namespace) -> int:
    import subprocess

    from ..briefs import load_org
    from ..broker import Broker
    from ..identity import default_keys_dir, ensure_keys
    from ..process import spawn_agent

    org, briefs = load_org(args.org)
    for brief, _ in briefs:
        _check_kind(brief)  # as `mesh brief check` does: refused here, not by each process
    ids = [
        (brief.name if replicas == 1 else f"{brief.name}-{i + 1}", brief.name)
        for brief, replicas in briefs
        for i in range(replicas)
    ]
    keys_dir = Path(args.keys) if args.keys else default_keys_dir()
    seeds: dict[str, Path] = {}
    broker = None
    server = args.server
    if server is None:
        # Secure by default: the org's own broker lets in only the org's keys (made
        # here once, reused after), each agent with its own id's permissions.
        wanted = {agent_id: "agent" for agent_id, _ in ids} | {"operator": "operator", "client": "client"}
        # Agents' keys take work from any queue unless --bind: a generalist takes the
        # tasks of capabilities below its own that no brief names. The org's client is
        # also the person who answers the inbox: it may clear what it answered.
        serves: dict[str, tuple[str, ...]] = {"client": ("*",)}
        if args.bind:
            by_brief = _org_bindings([brief for brief, _ in briefs])
            serves |= {agent_id: by_brief[name] for agent_id, name in ids}
        seeds = ensure_keys(keys_dir, wanted, serves=serves)
        broker = Broker(
            port=4222 if _port_free(4222) else 0,
            http_port=8222 if _port_free(8222) else 0,
            auth=str(keys_dir),
            prefix=args.prefix,
        )
        broker.start()
        server = broker.url
        print(f"broker: {server} (monitoring {broker.monitor_url}); keys in {keys_dir}", file=sys.stderr)
    elif args.keys or os.environ.get("MESH_KEYS"):  # another's broker: agents with a key there use it
        seeds = {agent_id: seed for agent_id, _ in ids if (seed := keys_dir / f"{agent_id}.nk").exists()}
    procs = []
    arrivals = None
    try:
        for agent_id, name in ids:
            env = {"MESH_NKEY": str(seeds[agent_id])} if agent_id in seeds else None
            procs.append(
                spawn_agent(args.org, server=server, agent_id=agent_id, agent_name=name, log_path=None, env=env)
            )
        print(f"org {org.name!r}: {len(procs)} agent processes; Ctrl-C drains them all", file=sys.stderr)
        key = f" --nkey {seeds['client']}" if "client" in seeds else ""
        print(f"submit work with: mesh submit CAPABILITY TEXT --wait --server {server}{key}", file=sys.stderr)
        arrivals = _report_arrivals([agent_id for agent_id, _ in ids], server, args.prefix, seeds.get("client"))
        # Restart nothing silently: a process that exits on its own is reported.
        with _stop_signals() as stop:
            while not stop.wait(0.5):
                for p in procs:
                    code = p.process.poll()
                    if code is not None and not p.expected_exit:
                        print(f"agent {p.agent_id} exited with code {code}; not restarting it", file=sys.stderr)
                        p.expected_exit = True
                if all(p.expected_exit for p in procs):
                    return 1
        print("draining agents ...", file=sys.stderr)
        return 0
    finally:
        if arrivals is not None:
            arrivals.stop()
        with _ignore_sigint():
            for p in procs:
                p.drain()
            for p in procs:
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:  # not drained within a minute: stop it now
                    print(f"agent {p.agent_id} did not drain within 60 s; killed", file=sys.stderr)
                    p.kill()
            if broker is not None:
                broker.stop()


class _Arrivals:
    """`mesh up`'s report of agents coming up, in a thread of its own (the command's
    main thread waits on signals and its children)."""

    def __init__(self, expected: list[str], connect: Callable[[], Awaitable[Mesh]]) -> None:
        import functools

        import anyio

        from .progress import report_arrivals

        self._stop = threading.Event()
        run = functools.partial(report_arrivals, expected, connect, stop=self._stop, say=self._say)
        self._thread = threading.Thread(target=anyio.run, args=(run,), name="arrivals", daemon=True)
        self._thread.start()

    @staticmethod
    def _say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _report_arrivals(expected: list[str], server: str, prefix: str, seed: Path | None) -> _Arrivals:
    import dataclasses

    from protocol import Names

    from ..client import Mesh
    from ..settings import Settings

    settings = Settings.from_env()
    if seed is not None:  # the org's own broker: read the directory as its client
        settings = dataclasses.replace(settings, nkey=str(seed))

    async def connect() -> Mesh:
        return await Mesh.connect(server, names=Names(prefix), settings=settings)

    return _Arrivals(expected, connect)


@contextlib.contextmanager
def _stop_signals() -> Iterator[threading.Event]:
    """An event that SIGINT (Ctrl-C) and SIGTERM (systemd, docker, kill) set. Handled
    explicitly rather than as KeyboardInterrupt: SIGTERM would otherwise kill us without
    stopping our children, and a SIGINT ignored by whoever started us would be ignored
    here too."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _ignore_sigint() -> Iterator[None]:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# --- tasks ----------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace) -> int:
    import msgspec

    from protocol import MAX_VOTES, ReviewPolicy

    from . import render

    data = None
    if args.data is not None:
        try:
            raw = Path(args.data[1:]).read_text() if args.data.startswith("@") else args.data
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise UserError(
                f"--data {args.data}: cannot read the file ({why}); pass a JSON value or @file.json"
            ) from None
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise UserError(f"--data is not valid JSON ({exc}); pass a JSON value or @file.json") from None
        except RecursionError:
            raise UserError("--data is nested too deeply to read; pass a flatter JSON value") from None
        except ValueError as exc:  # an integer of more digits than Python converts (4300)
            raise UserError(f"--data: {exc}") from None
    if args.reject_quorum is not None and not args.review:
        raise UserError("--reject-quorum needs --review N: it is a rule of the review's last round")
    if args.review and args.review - 1 + (args.reject_quorum or 1) > MAX_VOTES:
        raise UserError(
            f"--review {args.review} with --reject-quorum {args.reject_quorum} is more votes than one round holds; "
            f"keep the two at most {MAX_VOTES + 1} together"
        )
    review = (
        ReviewPolicy(quorum=args.review, capability=args.reviewer, reject_quorum=args.reject_quorum or 1)
        if args.review
        else None
    )

    async def submit() -> int:
        mesh = await _mesh(args)
        try:
            record = await mesh.submit(
                args.capability,
                args.text,
                data=data,
                criteria=args.criteria,
                review=review,
                deadline_s=args.deadline,
                hops=args.hops,
                claim_timeout_s=args.claim_timeout,
            )
            if not args.wait:
                print(json.dumps({"id": record.id, "state": record.state}) if args.json else record.id)
                return 0
            if args.json:
                final = await mesh.wait(record, on_question=_ask_the_terminal)
            else:
                print(f"submitted {record.id}; waiting ...", file=sys.stderr, flush=True)
                final = await _wait_showing_status(mesh, record)
        finally:
            await mesh.close()
        if args.json:
            print(json.dumps(msgspec.to_builtins(final)))
        else:
            print(render.outcome(final))
        return 0 if final.state == "done" else 1

    return _run(submit)


async def _wait_showing_status(mesh: Mesh, record: Any) -> Any:
    """Wait for the task, showing its status line (state, owner, last progress note,
    elapsed) on stderr: rewritten in place on a terminal, a line per change otherwise."""
    import anyio

    from .progress import StatusLine

    status = StatusLine(sys.stderr)

    async def on_record(current: Any) -> None:
        status.update(current)

    async def ask(question: Any) -> str:
        status.clear()
        return await _ask_the_terminal(question)

    async def tick() -> None:
        while True:  # the elapsed time moves on a terminal even while nothing is written
            await anyio.sleep(0.5)
            status.draw()

    if not status.tty:
        final = await mesh.wait(record, on_question=ask, on_record=on_record)
    else:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(tick)
                final = await mesh.wait(record, on_question=ask, on_record=on_record)
                tg.cancel_scope.cancel()
        finally:
            status.clear()
    status.finish(final)
    return final


async def _ask_the_terminal(question: Any) -> str:
    """An agent asked the submitter a question: show it, read one line as the answer."""
    import anyio.to_thread

    print(f"\nquestion from {question.requester} (task {question.parent}):\n  {question.instruction}", file=sys.stderr)
    print("your answer> ", end="", file=sys.stderr, flush=True)
    line: str = await anyio.to_thread.run_sync(sys.stdin.readline)
    return line.strip()


def cmd_agents(args: argparse.Namespace) -> int:
    import msgspec

    from . import render

    async def agents() -> int:
        mesh = await _mesh(args)
        try:
            cards = await mesh.agents()
        finally:
            await mesh.close()
        if args.json:
            print(json.dumps([msgspec.to_builtins(c) for c in cards]))
        else:
            print(render.agents_table(cards, now=time.time()))
        return 0

    return _run(agents)


def cmd_watch(args: argparse.Namespace) -> int:
    from protocol import validate_task_id

    from . import render

    if args.root is not None:
        validate_task_id(args.root)  # before "watching ...": nothing is watched

    async def watch() -> int:
        mesh = await _mesh(args)
        try:
            print(
                f"watching {'task tree ' + args.root if args.root else 'all events'} (Ctrl-C to stop)", file=sys.stderr
            )
            async with mesh.backing() as backing:
                async for event in mesh.events(root=args.root, history=args.history):
                    print(render.event_line(event, unbacked=not await backing.backed(event)), flush=True)
        finally:
            await mesh.close()
        return 0

    return _run(watch)


def cmd_trace(args: argparse.Namespace) -> int:
    import msgspec

    from . import render

    async def trace() -> int:
        mesh = await _mesh(args)
        try:
            root = await mesh.get(args.id)
            tree = await mesh.tree(args.id)
            events = await mesh.history(root.root)
            reports = await mesh.reports([r.id for _, r in tree])
            ours = [e for e in events if e.task in {r.id for _, r in tree}]
            unbacked = await mesh.unbacked(ours)
        finally:
            await mesh.close()
        if args.json:
            print(
                json.dumps(
                    {
                        "tasks": [msgspec.to_builtins(r) for _, r in tree],
                        "events": [msgspec.to_builtins(e) for e in events],
                        "reports": [msgspec.to_builtins(r) for r in reports],
                        # events no verified write backs (with identities): a false trace
                        "unbacked": [{"task": t, "at": at, "kind": kind} for t, at, kind in sorted(unbacked)],
                    }
                )
            )
        else:
            print(render.trace(tree, ours, reports, unbacked))
        return 0

    return _run(trace)


def cmd_cancel(args: argparse.Namespace) -> int:
    from . import render

    async def cancel() -> int:
        mesh = await _mesh(args)
        try:
            record = await mesh.cancel(args.id)
        finally:
            await mesh.close()
        print(render.outcome(record))
        return 0

    return _run(cancel)


# --- briefs ---------------------------------------------------------------------------------


def cmd_brief(args: argparse.Namespace) -> int:
    from ..briefs import BRIEF_TEMPLATE, load_brief, load_org
    from . import one_line

    if args.brief_command == "new":
        if args.file == "-":
            sys.stdout.write(BRIEF_TEMPLATE)
        else:
            path = Path(args.file)
            try:
                with path.open("x") as out:  # never over an existing file
                    out.write(BRIEF_TEMPLATE)
            except FileExistsError:
                raise UserError(f"{path} exists; choose another name or remove it first") from None
            except OSError as exc:
                raise UserError(f"{path}: cannot write ({exc.strerror}); choose another path") from None
            print(f"wrote {path}; edit it, then: mesh brief check {path}", file=sys.stderr)
        return 0
    # An org file lists agents; anything else is read as a brief (which says what is wrong).
    text = Path(args.file).read_bytes().decode(errors="replace") if Path(args.file).is_file() else ""
    if "[[agents]]" in text or "agents =" in text:
        org, briefs = load_org(args.file)
        for brief, _ in briefs:
            _check_kind(brief)
        total = sum(n for _, n in briefs)
        print(f"{one_line(args.file)}: ok (org {org.name!r}: {len(briefs)} agents, {total} processes)")
    else:
        brief = load_brief(args.file)
        _check_kind(brief)
        print(f"{one_line(args.file)}: ok (agent {brief.name!r} serves {', '.join(brief.serves)}; kind {brief.kind})")
    return 0


def _check_kind(brief: Any) -> None:
    from ..kinds import make_worker

    make_worker(brief)


def cmd_bench(args: argparse.Namespace) -> int:
    """Run ``python -m bench.run --only org`` in the checkout this mesh runs from, then
    print its cells: measured beside the arithmetic."""
    import subprocess
    import tempfile

    from . import render

    repo = Path(__file__).resolve().parents[2]
    if not (repo / "bench" / "org.py").is_file():
        raise UserError(
            "the benchmarks are not installed with the package: run `mesh bench` from a checkout of agent-mesh "
            "installed with `pip install -e '.[dev,bench]'`"
        )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix="mesh-bench-") as tmp:
        results = repo / "bench" / "results" if args.full else Path(tmp)
        cmd = [sys.executable, "-m", "bench.run", "--only", "org", "--no-report", "--results", str(results)]
        code = subprocess.run([*cmd, *([] if args.full else ["--quick"])], cwd=repo, env=env).returncode
        found = results / "org.json"
        if code != 0 or not found.is_file():
            raise UserError(f"the org benchmark failed (exit {code}); its output is above")
        run = json.loads(found.read_text())
    print(render.org_cells(run["result"]))
    if args.full:
        print(f"wrote {found}; rewrite docs/BENCHMARKS.md with: python -m bench.run --report-only")
    return 0


def cmd_kinds(args: argparse.Namespace) -> int:
    from ..kinds import KindError, kind_conflicts, kinds

    errors = kind_conflicts()
    for name, kind in sorted(kinds().items()):
        try:
            summary = kind.summary()
        except KindError as exc:  # a broken published kind: say which, list the rest
            errors.append(str(exc))
            continue
        print(f"{name:8} {summary}")
        print(f"{'':8}   from {kind.origin}")
    print("package.module:Class   your own worker, constructed as Class(brief)")
    for line in errors:
        print(f"mesh kinds: error: {line}", file=sys.stderr)
    return 2 if errors else 0


# --- the human inbox ---------------------------------------------------------------------------


def _person() -> str:
    import getpass
    import re

    return "human-" + (re.sub(r"[^A-Za-z0-9_-]", "-", getpass.getuser()) or "someone")


def cmd_inbox(args: argparse.Namespace) -> int:
    """List work and reviews offered to people; answer, approve or veto one."""
    import msgspec

    from protocol import Names

    from ..client import Mesh, default_server
    from . import render

    # With a key, the person is who the key says (another --as is refused for a client)
    person = args.as_ or (None if os.environ.get("MESH_NKEY") else _person())

    async def inbox() -> int:
        mesh = await Mesh.connect(args.server or default_server(), client_id=person, names=Names(args.prefix))
        try:
            if args.inbox_command in (None, "list"):
                items = await mesh.offered(args.capability)
                if args.json:
                    print(json.dumps([msgspec.to_builtins(r) for r in items]))
                else:
                    print(render.inbox(items))
                return 0
            if args.inbox_command == "answer":
                record = await mesh.take_and_finish(args.id, args.text)
            elif args.inbox_command == "approve":
                record = await mesh.vote(args.id, approve=True)
            else:
                record = await mesh.vote(args.id, approve=False, reasons=tuple(args.reason))
            print(f"{record.id}: {record.state}{' (' + record.reason + ')' if record.reason else ''}")
            return 0
        finally:
            await mesh.close()

    return _run(inbox)


# --- MCP ---------------------------------------------------------------------------------------


def cmd_otel(args: argparse.Namespace) -> int:
    """Send one span per task, built from the events stream, to the OTEL_* exporter."""
    from ..otel import OtelUnavailable, export_task_spans, task_span_sink

    try:
        sink = task_span_sink()
    except OtelUnavailable as exc:
        raise UserError(str(exc)) from None

    async def export() -> int:
        import anyio

        mesh = await _mesh(args)
        try:
            print("exporting a span per task (Ctrl-C to stop)", file=sys.stderr, flush=True)
            async with anyio.create_task_group() as tg:

                async def on_signals() -> None:
                    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                        async for _ in signals:
                            tg.cancel_scope.cancel()

                tg.start_soon(on_signals)
                await export_task_spans(mesh, sink, history=args.history)
        finally:
            await mesh.close()
            sink.close()
            print(f"exported {sink.sent} task spans", file=sys.stderr)
        return 0

    return _run(export)


def cmd_mcp(args: argparse.Namespace) -> int:
    from ..defaults import default_server
    from ..mcp import McpUnavailable, serve

    server = args.server or default_server()
    token = _gateway_token(args, "the MCP gateway") if args.http else None

    async def gateway() -> int:
        await serve(server, prefix=args.prefix, http=args.http, host=args.host, port=args.port, token=token)
        return 0

    try:
        return _run(gateway)
    except McpUnavailable as exc:
        raise UserError(str(exc)) from None


# --- top ---------------------------------------------------------------------------------------


def cmd_top(args: argparse.Namespace) -> int:
    import anyio

    from ..top import take_snapshot
    from ..ui.board import Board
    from ..ui.feed import follow_mesh
    from . import render

    async def top() -> int:
        mesh = await _mesh(args)
        try:
            if args.once:
                snap = await take_snapshot(mesh, stuck_after=args.stuck_after, loop_after=args.loop_after)
                print(json.dumps(snap.to_json()) if args.json else render.top_view(snap))
                return 0
            # On a terminal, redraw in place (clear screen, cursor home); piped, append
            # one view per refresh so the output stays a readable log.
            redraw = "\x1b[H\x1b[2J" if sys.stdout.isatty() else ""
            # Read once, then followed: each refresh costs the writes since the last one,
            # not a read of the whole bucket (which holds every task finished in the last
            # MESH_FINISHED_TTL: on a busy mesh, tens of thousands). With identities,
            # every write is verified as it comes, as `mesh ui` does.
            board = Board(stuck_after=args.stuck_after, loop_after=args.loop_after)
            async with anyio.create_task_group() as tg:
                await tg.start(follow_mesh, mesh, board)
                while True:
                    snap = board.snapshot(time.time())
                    stamp = time.strftime("%H:%M:%S")
                    print(f"{redraw}mesh top  {stamp}  (every {args.interval:g} s; Ctrl-C quits)\n", flush=False)
                    print(render.top_view(snap), end="\n\n", flush=True)
                    await anyio.sleep(args.interval)
            return 0  # (not reached: the views go on until Ctrl-C)
        finally:
            await mesh.close()

    return _run(top)


# --- the web view ---------------------------------------------------------------------------


def cmd_ui(args: argparse.Namespace) -> int:
    try:
        import starlette  # noqa: F401  (an extra: say how to get it, not a traceback)
        import uvicorn  # noqa: F401
    except ImportError:
        raise UserError("the web view needs its extra: pip install 'agent-mesh[ui]'") from None
    from protocol import validate_agent_id, validate_capability

    from ..ui.server import PortInUse, bind

    validate_capability(args.capability)
    if args.as_ is not None:
        validate_agent_id(args.as_)
    actor, read_only = _ui_actor(args.as_)
    token = _gateway_token(args, "the web view")
    try:
        sock = bind(args.host, args.port)
    except PortInUse as exc:
        raise UserError(str(exc)) from None
    try:
        return _run(_ui_serve, args, sock, actor, read_only, token)
    finally:
        sock.close()


def _ui_actor(as_: str | None) -> tuple[str | None, str]:
    """Who the page acts as, or None and why it may not act: with auth on (a key),
    only an operator's key acts from a page anyone who reaches it can use."""
    seed = os.environ.get("MESH_NKEY")
    if not seed:
        return as_ or _person(), ""
    from ..identity import load_seed

    identity = load_seed(seed)
    if identity.role != "operator":
        whose = f"a {identity.role}'s" if identity.role else "a"
        return (
            None,
            f"read-only: inbox actions need an operator's key (mesh ui --nkey OPERATOR.nk); {seed} is {whose} key",
        )
    return as_ or identity.name, ""


async def _ui_serve(args: argparse.Namespace, sock: Any, actor: str | None, read_only: str, token: str | None) -> int:
    from protocol import Names

    from ..client import Mesh, default_server
    from ..ui.server import UiConfig, serve

    server = args.server or default_server()

    def announce(url: str) -> None:
        if token is not None:  # opened once with it, the browser keeps it in a cookie
            url = f"{url}?token={token}"
        print(f"mesh ui at {url} (Ctrl-C stops)", flush=True)

    config = UiConfig(actor=actor, read_only_reason=read_only, inbox_capability=args.capability, server=server)
    async with await Mesh.connect(server, client_id=actor, names=Names(args.prefix)) as mesh:
        await serve(
            mesh,
            sock,
            config,
            stuck_after=args.stuck_after,
            loop_after=args.loop_after,
            announce=announce,
            token=token,
        )
    return 0


# --- keys and authorization ---------------------------------------------------------------------


def _binding(serves: tuple[str, ...] | None) -> str:
    if serves is None or "*" in serves:
        return "serves any"
    return f"serves {', '.join(serves)}" if serves else "serves nothing"


def _capabilities(given: list[str] | None) -> list[str] | None:
    """--serves as given: repeated, or comma-separated; '' alone binds to nothing."""
    if given is None:
        return None
    return [c.strip() for value in given for c in value.split(",") if c.strip()]


def cmd_keys(args: argparse.Namespace) -> int:
    from ..identity import bind_key, default_keys_dir, list_keys, new_key

    directory = Path(args.dir) if args.dir else default_keys_dir()
    if args.keys_command == "new":
        key = new_key(directory, args.name, args.role, serves=_capabilities(args.serves))
        print(key.public_key)
        bound = "" if key.role == "operator" else f", {_binding(key.serves)}"
        print(
            f"wrote {directory / (key.name + '.nk')} (secret, mode 0600) and {directory / (key.name + '.pub')} "
            f"({key.role}{bound}); the broker learns the key from the .pub (`mesh auth config`, `mesh broker --auth`)",
            file=sys.stderr,
        )
        return 0
    if args.keys_command == "bind":
        key = bind_key(directory, args.name, _capabilities(args.serves) or ())
        print(
            f"{directory / (key.name + '.pub')}: {key.role}, {_binding(key.serves)}; the broker enforces it once its "
            "auth config is rewritten (`mesh auth config DIR --out FILE`) and reloaded",
            file=sys.stderr,
        )
        return 0
    keys = list_keys(directory)
    if args.json:
        import msgspec

        print(json.dumps(msgspec.to_builtins(keys)))
    else:
        for key in keys:
            bound = "" if key.role == "operator" else _binding(key.serves)
            print(f"{key.name:24} {key.role:9} {key.public_key}  {bound}".rstrip())
    return 0


def cmd_auth(args: argparse.Namespace) -> int:
    from protocol import Names

    from ..auth import auth_config, write_auth_config
    from ..identity import list_keys

    if args.out:
        try:
            count = write_auth_config(args.dir, args.out, Names(args.prefix))
        except OSError as exc:
            raise UserError(f"cannot write {args.out}: {exc.strerror or exc}") from None
        print(f"wrote {args.out}: {count} users; include it in the server's config and reload", file=sys.stderr)
    else:
        sys.stdout.write(auth_config(list_keys(args.dir), Names(args.prefix)))
    return 0


# --- the ecosystem's protocols (docs/INTEROP.md) ----------------------------------------------


def cmd_a2a(args: argparse.Namespace) -> int:
    try:
        import a2a.server  # noqa: F401  (an extra: say how to get it, not a traceback)
        import uvicorn  # noqa: F401
    except ImportError:
        raise UserError("A2A needs the SDK: pip install 'agent-mesh[a2a]'") from None
    from protocol import validate_agent_id, validate_capability

    if args.id is not None:
        validate_agent_id(args.id)  # (an InvalidName is one line, like every bad name)
    for capability in args.capability:
        validate_capability(capability)
    return _run(_a2a_serve, args)


def _gateway_token(args: argparse.Namespace, what: str) -> str | None:
    """The token a gateway's requests must carry (--token-file), said to be missing
    before connecting if it listens beyond loopback without one."""
    from ..http_token import check_exposure, load_token

    token = load_token(args.token_file) if args.token_file else None
    check_exposure(args.host, token, what=what)
    return token


async def _a2a_serve(args: argparse.Namespace) -> int:
    from protocol import Names

    from ..a2a_gateway import DEFAULT_ID, serve
    from ..client import Mesh, default_server
    from ..identity import default_id

    token = _gateway_token(args, "the A2A gateway")

    def announce(url: str) -> None:
        print(f"A2A gateway at {url} (agent card: {url}.well-known/agent-card.json)", flush=True)

    # With a client's key the id is the key's name (ids are bound to keys); an operator's
    # key may act under any id, so the gateways' shared default holds.
    client_id = args.id or default_id(os.environ.get("MESH_NKEY") or None) or DEFAULT_ID
    async with await Mesh.connect(
        args.server or default_server(), client_id=client_id, names=Names(args.prefix)
    ) as mesh:
        await serve(
            mesh,
            host=args.host,
            port=args.port,
            capabilities=tuple(args.capability),
            claim_timeout_s=args.claim_timeout,
            public_url=args.url,
            announce=announce,
            token=token,
        )
    return 0
