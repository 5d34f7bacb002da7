"""Fuzz the `mesh` command line (issue 12, item 7): whatever the arguments and brief
files, the process ends with one of three exit codes and never with a traceback.

    0  the command did what was asked (``--help`` included)
    1  it ran, and what it reports is a failure: ``submit --wait`` on a task that
       ended failed or cancelled, ``up`` when every agent exited on its own
    2  the input was refused (an argument, a brief or org file, a server URL, an id
       the mesh does not know): exactly one line on stderr saying what and why,
       ``mesh <command>: error: ...``. The one intended exception: ``agent run``,
       ``up`` and ``broker`` write their log on stderr, so log lines may come before
       the error line (still one line, and the last).

Most examples run the CLI in this process (``mesh.cli.main(argv)``, with stdout and
stderr captured as the interpreter would write them, and ``SystemExit`` caught), so
hundreds of them take seconds; an exception escaping ``main`` is what a user would
see as a traceback. A few real processes check that this harness is faithful, and
run the commands that only end when stopped (``broker``, ``watch``, ``top``).

Commands that need a broker run against one real nats-server per module, with short
claim timeouts so nothing waits long. CI is reproducible: examples are derandomized
unless ``MESH_FUZZ_RANDOM=1`` (then hypothesis explores new inputs on each run);
``MESH_FUZZ_EXAMPLES`` sets how many per property (default 60: the file takes about
30 s on two cores). To hunt: ``MESH_FUZZ_RANDOM=1 MESH_FUZZ_EXAMPLES=1000``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mesh.briefs import load_brief
from mesh.broker import Broker, free_ports
from mesh.cli import main
from mesh.client import Mesh

FUZZ = settings(
    max_examples=int(os.environ.get("MESH_FUZZ_EXAMPLES", "60")),
    deadline=None,
    derandomize=not os.environ.get("MESH_FUZZ_RANDOM"),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    database=None,
)

UNREACHABLE = "nats://127.0.0.1:9"  # nothing listens on the discard port


# --- the harness --------------------------------------------------------------------------


@dataclass
class Outcome:
    argv: list[str]
    code: int
    out: str
    err: str

    def check(self) -> None:
        """The property: exit 0, 1 or 2; never a traceback; exit 2 says why in one line."""
        where = f"mesh {' '.join(map(repr, self.argv))}\nexit {self.code}\nstderr: {self.err!r}"
        assert self.code in (0, 1, 2), where
        assert "Traceback" not in self.err and "Traceback" not in self.out, where
        if self.code == 2:
            lines = self.err.splitlines()
            # `agent run`, `up` and `broker` write their log on stderr (info and up):
            # there, log lines may come first; the error is still the one last line.
            if self.logs:
                lines = lines[-1:]
            assert len(lines) == 1 and lines[0].strip(), where
            assert lines[0].startswith(("mesh ", "mesh:")) and ": error: " in lines[0], where

    @property
    def logs(self) -> bool:
        words = [a for a in self.argv if not a.startswith("-")]
        return bool(words) and (words[0] in ("up", "broker") or words[:2] == ["agent", "run"])


class _Escaped(Exception):
    """An exception left ``main``: a real process would print its traceback."""


def run_cli(argv: list[str]) -> Outcome:
    """``mesh ARGV`` in this process, streams encoded as the interpreter encodes them
    (stdout strict UTF-8, stderr backslashreplace), so an unprintable value fails here
    as it would in a terminal."""
    out_bytes, err_bytes = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(out_bytes, encoding="utf-8", errors="strict", write_through=True)
    err = io.TextIOWrapper(err_bytes, encoding="utf-8", errors="backslashreplace", write_through=True)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        import traceback

        raise _Escaped(
            f"mesh {' '.join(map(repr, argv))} raised (a traceback for a user):\n"
            + "".join(traceback.format_exception(exc))
        ) from None
    return Outcome(argv, code, out_bytes.getvalue().decode(), err_bytes.getvalue().decode(errors="replace"))


def run_process(argv: list[str], *, timeout: float = 30.0, env: dict[str, str] | None = None) -> Outcome:
    proc = subprocess.run(
        [sys.executable, "-m", "mesh", *argv],
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    return Outcome(argv, proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))


def fuzz(argv: list[str]) -> Outcome:
    outcome = run_cli(argv)
    outcome.check()
    return outcome


# --- hostile values -------------------------------------------------------------------------

# Text that can be a command-line argument: no NUL (the OS refuses it) and no lone
# surrogates except the ones Python makes of undecodable bytes (surrogateescape).
_ARG_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
_binaryish = (
    st.binary(min_size=1, max_size=12)
    .filter(lambda b: b"\x00" not in b)
    .map(lambda b: b.decode("utf-8", "surrogateescape"))
)
text = st.one_of(
    st.text(_ARG_CHARS, max_size=24),
    _binaryish,
    st.sampled_from(["", " ", "-", "--", "-x", "\n", "a\nb", "\t", "é", "名前", "🙂", "\u202e", "\x1b[2J", "x" * 5000]),
)
numbers = st.one_of(
    st.sampled_from(
        [
            *["0", "1", "-1", "-0", "nan", "NaN", "inf", "-inf", "1e308", "1e-320", "1e400", "0.5", "16", "17"],
            *["100", "2147483648", "9223372036854775808", "99999999999999999999999", "1" * 5000, "0x10", "1_000"],
            *["\u0663", "\uff11"],  # an Arabic-Indic three, a fullwidth one: int() takes both
        ]
    ),
    st.integers().map(str),
    st.floats().map(repr),
    text,
)
durations = st.one_of(
    numbers,
    st.builds(lambda n, u: n + u, numbers, st.sampled_from(["s", "ms", "m", "h", "d", "S", " s", "w", "sec"])),
    st.sampled_from(["30s", "2m", "500ms", "1h", "7d", "9" * 400 + "s", "1.5.5s", ".s", "s", "1e3s"]),
)
sizes = st.one_of(
    numbers,
    st.builds(lambda n, u: n + u, numbers, st.sampled_from(["b", "kb", "KiB", "MB", "GiB", "TiB", "x"])),
    st.sampled_from(["10GiB", "0", "9" * 400 + "gib", "1.5GiB", "-1GiB", "99999999999999999999999999gib"]),
)
ids = st.one_of(
    st.sampled_from(["nosuchtask", "a.b", "*", ">", "a b", "..", "task.x", "ABC", "-1", "x" * 300, "a/b", "$SYS"]),
    text,
)
capabilities = st.one_of(
    st.sampled_from(["echo", "fz.nobody", "a.*", "a..b", "a.>", "Echo", "human", "human.review", "x" * 300]),
    ids,
)
servers = st.sampled_from(
    [
        *["", "nats://127.0.0.1:9", "garbage", "nats://", "nats://[::1", "http://127.0.0.1:9"],
        *[
            "nats://127.0.0.1:99999",
            "nats://127.0.0.1:-1",
            "tls://127.0.0.1:9",
            "nats://u:p@127.0.0.1:9",
            ",",
            "127.0.0.1:9",
        ],
    ]
)
prefixes = st.one_of(st.sampled_from(["mesh", "a.b", "*", "", "MESH", "x" * 200, "fz_other"]), text)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


def maybe(flag: str, values: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    return st.one_of(st.just([]), values.map(lambda v: [flag, v]))


def flags(*names: str) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(names), unique=True).map(list)


def combine(*parts: st.SearchStrategy[list[str]]) -> st.SearchStrategy[list[str]]:
    return st.tuples(*parts).map(lambda ps: [a for p in ps for a in p])


# --- the broker and what it holds -----------------------------------------------------------


@dataclass
class World:
    url: str
    files: Path
    open_id: str  # a task no agent takes (it ends no_agent when its claim timeout passes)
    corrupt_id: str  # a record that is not valid protocol


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("clifuzz")
    store = root / "js"
    store.mkdir()
    broker = Broker(store=str(store))
    broker.start()
    files = root / "files"
    files.mkdir()
    (files / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (files / "empty.json").write_bytes(b"")
    (files / "ok.json").write_text('{"text": "hello", "n": [1, 2.5, null]}')
    (files / "nan.json").write_text("NaN")
    (files / "deep.json").write_text("[" * 50_000 + "]" * 50_000)
    (files / "bigint.json").write_text("1" * 5000)
    (files / "huge.json").write_text(json.dumps("x" * 3_000_000))
    (files / "dir").mkdir()
    (files / "unreadable.json").write_text("{}")
    (files / "unreadable.json").chmod(0)

    async def seed() -> tuple[str, str]:
        mesh = await Mesh.connect(broker.url, client_id="clifuzz")
        try:
            record = await mesh.submit("fz.nobody", "wait for nobody", claim_timeout_s=3600.0)
            await mesh.bus.tasks.put("task.corrupt1", b'{"v":2,"id":"corrupt1","state":"working","epoch":-1}')
            return record.id, "corrupt1"
        finally:
            await mesh.close()

    open_id, corrupt_id = anyio.run(seed)
    try:
        yield World(broker.url, files, open_id, corrupt_id)
    finally:
        broker.stop()


def task_ids(world: World) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from([world.open_id, world.corrupt_id]), ids)


def data_values(world: World) -> st.SearchStrategy[str]:
    f = world.files
    return st.one_of(
        _json_values.map(json.dumps),
        text,
        st.sampled_from(["@", "@" + str(f / "missing.json"), "@" + str(f / "dir"), "@" + str(f / "unreadable.json")]),
        st.sampled_from(
            ["binary.bin", "empty.json", "ok.json", "nan.json", "deep.json", "bigint.json", "huge.json"]
        ).map(lambda name: "@" + str(f / name)),
        st.sampled_from(["[" * 100_000, "1" * 5000, "1" + "0" * 30, "-1e400", "NaN", "Infinity", '"\\ud800"', "{}"]),
    )


def server_flag(world: World) -> st.SearchStrategy[list[str]]:
    """Mostly the real broker; sometimes a server that is not there or not a URL."""
    real = st.just(["--server", world.url])
    # (a server that is not there costs a second of connection attempts: 1 in 10)
    return st.one_of(*[real] * 9, servers.map(lambda s: ["--server", s]))


def prefix_flag() -> st.SearchStrategy[list[str]]:
    return st.one_of(st.just([]), st.just([]), st.just([]), prefixes.map(lambda p: ["--prefix", p]))


# --- properties -----------------------------------------------------------------------------


def submit_argv(world: World) -> st.SearchStrategy[list[str]]:
    # --wait only with a short claim timeout: no agent serves these capabilities, so
    # the task ends no_agent (exit 1) within it. Without --wait any timeout will do.
    short = st.sampled_from(["0.05", "100ms", "0.2s"])
    waiting = combine(st.just(["--wait", "--claim-timeout"]), short.map(lambda v: [v]))
    return combine(
        prefix_flag(),
        st.just(["submit"]),
        st.tuples(capabilities, text).map(list),
        maybe("--data", data_values(world)),
        maybe("--criteria", text),
        maybe("--review", numbers),
        maybe("--reviewer", capabilities),
        maybe("--deadline", durations),
        maybe("--hops", numbers),
        st.one_of(waiting, maybe("--claim-timeout", durations)),
        flags("--json"),
        server_flag(world),
    )


@FUZZ
@given(data=st.data())
@example(data=None)  # the cases the issue listed, first
def test_submit(world: World, data: st.DataObject | None) -> None:
    if data is None:
        f = world.files
        for argv in (
            ["submit", "x", "y", "--data", "@" + str(f / "missing.json")],
            ["submit", "x", "y", "--review", "100", "--wait"],
            ["submit", "x", "y", "--deadline", "nan"],
            ["submit", "x", "y", "--data", "[" * 100_000],
            ["submit", "x", "y", "--data", "1" * 5000],
        ):
            fuzz([*argv, "--server", world.url])
        return
    fuzz(data.draw(submit_argv(world)))


def task_command_argv(world: World) -> st.SearchStrategy[list[str]]:
    tid = task_ids(world)
    return combine(
        prefix_flag(),
        st.one_of(
            combine(st.just(["trace"]), tid.map(lambda t: [t]), flags("--json")),
            combine(st.just(["cancel"]), tid.map(lambda t: [t])),
            combine(st.just(["agent"]), st.sampled_from([["drain"], ["status"]]), ids.map(lambda t: [t])),
            combine(st.just(["agents"]), flags("--json")),
            combine(
                st.just(["top", "--once"]),
                maybe("--stuck-after", durations),
                maybe("--loop-after", numbers),
                maybe("--interval", durations),
                flags("--json"),
            ),
            combine(
                st.just(["inbox"]),
                maybe("--capability", capabilities),
                maybe("--as", ids),
                flags("--json"),
                st.one_of(
                    st.just([]),
                    st.just(["list"]),
                    combine(st.just(["answer"]), tid.map(lambda t: [t]), text.map(lambda t: [t])),
                    combine(st.just(["approve"]), tid.map(lambda t: [t])),
                    combine(
                        st.just(["veto"]),
                        tid.map(lambda t: [t]),
                        st.lists(text, max_size=2).map(lambda rs: [a for r in rs for a in ("--reason", r)]),
                    ),
                ),
            ),
        ),
        server_flag(world),
    )


@FUZZ
@given(data=st.data())
def test_task_and_directory_commands(world: World, data: st.DataObject) -> None:
    fuzz(data.draw(task_command_argv(world)))


def test_trace_of_a_corrupt_record_is_one_line(world: World) -> None:
    outcome = fuzz(["trace", world.corrupt_id, "--server", world.url])
    assert outcome.code == 2 and "not valid protocol" in outcome.err


@FUZZ
@given(
    argv=combine(
        st.sampled_from([["--prefix", "fz_setup"], ["--prefix", "fz_setup2"], []]).map(
            # setup changes the history of the mesh it names: keep it off the one the
            # other properties use ("mesh")
            lambda p: p or ["--prefix", "fz_setup3"]
        ),
        st.just(["setup"]),
        maybe("--retention", durations),
        maybe("--retention-bytes", sizes),
        maybe("--replicas", numbers),
    ),
    server=st.one_of(st.none(), servers),
)
def test_setup(world: World, argv: list[str], server: str | None) -> None:
    fuzz([*argv, "--server", server if server is not None else world.url])


_ENV = ["MESH_LEASE_S", "MESH_FINISHED_TTL", "MESH_RETENTION", "MESH_RETENTION_BYTES", "MESH_REPLICAS", "MESH_STORAGE"]
_fresh_prefixes = iter(range(10**6))


@settings(FUZZ, max_examples=min(FUZZ.max_examples, 40))
@given(env=st.dictionaries(st.sampled_from(_ENV), st.one_of(durations, sizes, st.sampled_from(["file", "memory"]))))
def test_settings_from_the_environment(world: World, env: dict[str, str]) -> None:
    """The settings a process reads from its environment, on a mesh it creates (a
    fresh prefix: the streams and buckets are made with them)."""
    env = {k: v for k, v in env.items() if "\x00" not in v and v.encode(errors="ignore").decode() == v}
    saved = {k: os.environ.get(k) for k in _ENV}
    os.environ.update(env)
    try:
        fuzz(["--prefix", f"fzenv{next(_fresh_prefixes)}", "submit", "fz.nobody", "x", "--server", world.url])
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --- brief and org files ----------------------------------------------------------------------


def toml_value(value: Any) -> str:
    """A value as TOML (tests only need what the strategies make)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def toml_document(fields: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(key)} = {toml_value(value)}\n" for key, value in fields.items())


_toml_scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, -1, 2**63 - 1, -(2**63), 10**6]),
    st.floats(),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0, 5e-324]),
    st.text(max_size=12),
    st.sampled_from(["", " ", "x" * 100_000, "a.*", "echo", "Bad Cap"]),
)
_toml_lists = st.lists(_toml_scalars, max_size=3)
toml_values = st.one_of(
    _toml_scalars, _toml_lists, st.dictionaries(st.text(max_size=8), _toml_scalars | _toml_lists, max_size=3)
)
_KINDS = ["echo", "sleep", "fail", "relay", "pipeline", "extract", "check", "llm", "critic", "nope"]
_CUSTOM_KINDS = ["mesh.kinds:Echo", "mesh.kinds:Nope", "nonexistent_fz.module:X", "os:getcwd", "json:loads", ":", "a:"]
_OPTION_KEYS = ["seconds", "steps", "prefix", "message", "to", "steps", "criteria", "sentences", "min_chars", "k"]
_OPTION_KEYS += ["min_score", "support_threshold", "max_turns", "max_tokens", "timeout_s", "retries", "delay"]

valid_brief = st.fixed_dictionaries(
    {"name": st.sampled_from(["fz", "fz-agent", "a_1"]), "serves": st.sampled_from([["echo"], ["fz.a", "fz.b"]])},
    optional={
        "role": st.text(max_size=10),
        "brief": st.text(max_size=40),
        "may": st.lists(st.text(min_size=1, max_size=8), max_size=2),
        "must_not": st.lists(st.text(min_size=1, max_size=8), max_size=2),
        "delegates": st.sampled_from([[], ["fz.other"], ["critique"]]),
        "expertise": st.lists(st.text(max_size=8), max_size=2),
        "capacity": st.integers(1, 8),
        "kind": st.sampled_from(_KINDS + _CUSTOM_KINDS),
        "options": st.dictionaries(st.sampled_from(_OPTION_KEYS), toml_values, max_size=3),
        "review": st.fixed_dictionaries(
            {}, optional={"quorum": toml_values, "capability": st.sampled_from(["review", "a.*"])}
        ),
        "review_results": st.fixed_dictionaries({"capability": st.sampled_from(["critique", "echo", "x y"])}),
        "model": st.one_of(st.text(max_size=10), st.lists(st.sampled_from(["a/b", "a/b", "", "c/d"]), max_size=3)),
        "temperature": st.floats(),
        "budget": st.dictionaries(st.sampled_from(["tokens", "cost", "other"]), toml_values, max_size=2),
        "tools": st.lists(st.sampled_from(["search_docs", "bad tool", "search_docs", "x" * 70]), max_size=2),
        "lease_s": st.one_of(st.floats(), st.integers(-5, 10**30)),
        "drain_timeout_s": st.one_of(st.floats(), st.integers(-5, 10**30)),
    },
)
_BRIEF_FIELDS = ["name", "role", "brief", "may", "must_not", "serves", "delegates", "expertise", "capacity", "kind"]
_BRIEF_FIELDS += ["options", "review", "review_results", "model", "temperature", "budget", "tools", "lease_s"]


@st.composite
def brief_fields(draw: st.DrawFn) -> dict[str, Any]:
    """A brief's fields, then a few mutations: a wrong type, a missing key, an unknown key."""
    fields: dict[str, Any] = draw(valid_brief)
    for _ in range(draw(st.integers(0, 2))):
        match draw(st.sampled_from(["retype", "drop", "unknown"])):
            case "retype":
                fields[draw(st.sampled_from(_BRIEF_FIELDS))] = draw(toml_values)
            case "drop":
                fields.pop(draw(st.sampled_from(_BRIEF_FIELDS)), None)
            case "unknown":
                fields[draw(st.text(min_size=1, max_size=8))] = draw(toml_values)
    return fields


@st.composite
def brief_files(draw: st.DrawFn) -> bytes:
    """The bytes of a brief file: generated from the schema, or damaged on the way."""
    doc = toml_document(draw(brief_fields())).encode("utf-8", "surrogatepass")
    match draw(st.sampled_from(["as is", "as is", "as is", "truncate", "flip", "binary", "prefix"])):
        case "truncate":
            return doc[: draw(st.integers(0, len(doc)))]
        case "flip":
            i = draw(st.integers(0, max(len(doc) - 1, 0)))
            return doc[:i] + bytes([draw(st.integers(0, 255))]) + doc[i + 1 :]
        case "binary":
            return draw(st.binary(max_size=64))
        case "prefix":
            return (
                draw(st.sampled_from([b"\xef\xbb\xbf", b"\xff\xfe", b"a = " + b"[" * 5000 + b"\n", b"[[x]]\n"])) + doc
            )
    return doc


@st.composite
def org_files(draw: st.DrawFn) -> bytes:
    entries: list[Any] = []
    for _ in range(draw(st.integers(0, 3))):
        match draw(st.sampled_from(["inline", "path", "junk"])):
            case "inline":
                entry = draw(brief_fields())
                if "brief" in entry and draw(st.booleans()):
                    entry["text"] = entry.pop("brief")
            case "path":
                entry = {"brief": draw(st.sampled_from(["brief.toml", "missing.toml", "", "/", "dir"]) | toml_values)}
            case _:
                entry = draw(st.dictionaries(st.text(max_size=6), toml_values, max_size=3))
        if draw(st.booleans()):
            entry["replicas"] = draw(toml_values | st.integers(-2, 4))
        entries.append(entry)
    lines = [f"name = {toml_value(draw(st.sampled_from(['org', '']) | toml_values))}\n"]
    for entry in entries:
        lines.append("[[agents]]\n" + (toml_document(entry) if isinstance(entry, dict) else ""))
    return "".join(lines).encode("utf-8", "surrogatepass")


def _write(directory: Path, name: str, content: bytes) -> Path:
    path = directory / name
    path.write_bytes(content)
    return path


@FUZZ
@given(content=brief_files(), agent_id=st.one_of(st.none(), st.none(), st.none(), ids))
@example(content=b'name = "w"\nserves = ["a"]\nkind = "sleep"\n[options]\nseconds = "abc"\n', agent_id=None)
@example(content=bytes(range(256)), agent_id=None)
@example(content=b'name = "w"\nserves = ["a"]\nkind = "sleep"\n[options]\nsteps = inf\n', agent_id=None)
@example(content=b"a = " + b"[" * 100_000, agent_id=None)
def test_brief_files(world: World, content: bytes, agent_id: str | None) -> None:
    """`brief check` and `agent run` (against a server that is not there, so a valid
    brief ends at connecting) judge a brief file alike."""
    path = _write(world.files, "fuzzed-brief.toml", content)
    check = fuzz(["brief", "check", str(path)])
    if check.code == 0:  # what is accepted is in range: no endless or NaN durations
        brief = load_brief(path)
        numbers = [brief.temperature, brief.drain_timeout_s, brief.lease_s or 1.0, brief.capacity]
        assert all(math.isfinite(n) for n in numbers), brief
    # A valid brief under a valid id ends at connecting (a second of attempts): that
    # path is test_cli.py's; here the refusals, which come before it.
    if check.code == 2 or agent_id is not None:
        run = fuzz(["agent", "run", str(path), *(["--id", agent_id] if agent_id else []), "--server", UNREACHABLE])
        assert run.code == 2, run
        if check.code == 2 and agent_id is None:
            assert run.err == check.err.replace("mesh brief:", "mesh agent:"), (check.err, run.err)


@FUZZ
@given(content=org_files(), member=brief_files(), agent=st.one_of(st.none(), st.sampled_from(["fz", "nobody"]), ids))
def test_org_files(world: World, content: bytes, member: bytes, agent: str | None) -> None:
    """`brief check`, `agent run --agent` and `up` on an org file: an org `brief check`
    refuses is refused by `up` with the same line, before any process starts."""
    directory = world.files / "org"
    (directory / "dir").mkdir(parents=True, exist_ok=True)
    _write(directory, "brief.toml", member)
    path = _write(directory, "fuzzed-org.toml", content)
    check = fuzz(["brief", "check", str(path)])
    if agent is not None:
        run = fuzz(["agent", "run", str(path), "--agent", agent, "--server", UNREACHABLE])
        assert run.code == 2, run
    if check.code == 2:
        up = fuzz(["up", str(path), "--server", UNREACHABLE])
        assert up.code == 2, up


@FUZZ
@given(name=st.one_of(text.filter(lambda s: "/" not in s and s not in ("", ".", "..")), st.just("x" * 300)))
def test_brief_new(world: World, name: str) -> None:
    directory = world.files / "new"
    directory.mkdir(exist_ok=True)
    fuzz(["brief", "new", str(directory / name)])


@pytest.mark.parametrize(
    "path", ["/nonexistent-fz/brief.toml", "/proc/version", "/dev/full", "/", "-", "/proc/self/nope/x.toml"]
)
def test_brief_new_where_it_cannot_write(path: str) -> None:
    fuzz(["brief", "new", path])


# --- parsing alone, for the commands that run until stopped --------------------------------------


@FUZZ
@given(
    argv=st.one_of(
        combine(
            prefix_flag(),
            st.just(["broker"]),
            maybe("--host", text),
            maybe("--port", numbers),
            maybe("--http-port", numbers),
            maybe("--retention", durations),
            maybe("--retention-bytes", sizes),
        ),
        combine(st.just(["watch"]), maybe("--root", ids), flags("--history")),
        combine(st.just(["top"]), maybe("--interval", durations), maybe("--stuck-after", durations)),
        st.lists(text, max_size=4),  # any words at all
        st.lists(st.sampled_from(["-h", "--help", "agent", "brief", "inbox", "submit", "--prefix", "x", "--json"])),
    )
)
def test_parsing_alone(argv: list[str]) -> None:
    """Every command line either parses or is refused in one line (exit 2). Only the
    parser runs here: these commands, when valid, run until stopped."""
    from mesh.cli import build_parser

    out_bytes, err_bytes = io.BytesIO(), io.BytesIO()
    out = io.TextIOWrapper(out_bytes, encoding="utf-8", write_through=True)
    err = io.TextIOWrapper(err_bytes, encoding="utf-8", errors="backslashreplace", write_through=True)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            build_parser().parse_args(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    Outcome(argv, code, out_bytes.getvalue().decode(), err_bytes.getvalue().decode()).check()


# --- real processes -----------------------------------------------------------------------------


def test_the_in_process_harness_matches_real_processes(world: World) -> None:
    """The same command lines, in this process and as `python -m mesh`: same exit code,
    same stderr (for the refused ones), no traceback in either."""
    f = world.files
    cases = [
        ["submit", "x", "y", "--data", "@" + str(f / "binary.bin")],
        ["submit", "x", "y", "--review", "17"],
        ["submit", "x", "y", "--deadline", "1e400"],
        ["submit", "fz.nobody", "y", "--claim-timeout", "0.05", "--wait"],
        ["trace", world.corrupt_id],
        ["cancel", "nosuchtask"],
        ["brief", "check", str(f / "binary.bin")],
        ["setup", "--retention-bytes", "9" * 400 + "gib"],
        ["--prefix", "a.b", "agents"],
        ["nonsense"],
    ]
    for argv in cases:
        argv = [*argv, "--server", world.url] if argv[0] not in ("brief", "nonsense") else argv
        inside, real = run_cli(argv), run_process(argv)
        real.check()
        assert (inside.code, inside.err if inside.code == 2 else "") == (
            real.code,
            real.err if real.code == 2 else "",
        ), (
            inside,
            real,
        )


def _run_until_stopped(argv: list[str], *, ready: str, timeout: float = 20.0) -> Outcome:
    """A command that runs until stopped: wait for its ready text (on stdout or stderr)
    or its exit, then stop it with SIGINT as Ctrl-C would."""
    import threading

    proc = subprocess.Popen(
        [sys.executable, "-m", "mesh", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    seen = threading.Event()
    captured: dict[str, list[str]] = {"out": [], "err": []}

    def read(name: str, stream: Any) -> None:
        for line in stream:
            captured[name].append(line)
            if ready in line:
                seen.set()
        seen.set()  # EOF: the process ended

    readers = [
        threading.Thread(target=read, args=(name, stream), daemon=True)
        for name, stream in (("out", proc.stdout), ("err", proc.stderr))
    ]
    for reader in readers:
        reader.start()
    try:
        seen.wait(timeout)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for reader in readers:
        reader.join(10)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    # Stopped by us: Ctrl-C is not an error (0 for the broker, 130 for a watcher).
    code = 0 if proc.returncode in (130, -signal.SIGINT) else proc.returncode
    return Outcome(argv, code, "".join(captured["out"]), "".join(captured["err"]))


@settings(FUZZ, max_examples=6)
@given(
    port=st.sampled_from(["-1", "65536", "99999999999999999999", "nan", "", "free"]),
    http_port=st.sampled_from(["free", "-5", "0x1", "65536"]),
    host=st.sampled_from(["127.0.0.1", "", "not a host", "256.1.1.1", "::1"]),
    retention=st.sampled_from([[], ["--retention", "1ms"], ["--retention", "1e308"], ["--retention-bytes", "1"]]),
)
def test_broker_with_hostile_settings(
    tmp_path_factory: pytest.TempPathFactory, port: str, http_port: str, host: str, retention: list[str]
) -> None:
    free = iter(map(str, free_ports(2)))
    store = tmp_path_factory.mktemp("broker-fz")
    argv = ["broker", "--store", str(store), "--host", host]
    argv += [
        "--port",
        next(free) if port == "free" else port,
        "--http-port",
        next(free) if http_port == "free" else http_port,
    ]
    _run_until_stopped([*argv, *retention], ready="agents connect with").check()


@pytest.mark.parametrize(
    "argv",
    [
        ["watch", "--root", "a.b"],
        ["watch", "--root", "*"],
        ["watch", "--history", "--root", "nosuchtask"],
        ["top", "--interval", "1e308"],
        ["top", "--interval", "1e-300"],
        ["--prefix", "a b", "watch"],
    ],
)
def test_commands_that_run_until_stopped(world: World, argv: list[str]) -> None:
    ready = "watching" if "watch" in argv else "mesh top"  # (top's on stdout)
    _run_until_stopped([*argv, "--server", world.url], ready=ready, timeout=10.0).check()
