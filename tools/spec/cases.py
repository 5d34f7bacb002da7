"""The vectors' input cases, read from data: ``tools/cases/<family>.toml``.

A case file holds what a vector family feeds the protocol's pure functions (records,
events, arguments, names); the generator runs the functions and writes what they give.
Every value in a case file is spelled as the wire spells it, with three conventions
(TOML has no null and no arithmetic):

- a time (``at``, ``now``, ``deadline``) is seconds after :data:`T0`;
- a record is the name of one in ``world.toml``, or a table deriving one (see there);
- a field or argument left out is its default, ``unset = ["field"]`` makes a field null.

A file or a case that cannot be used raises :class:`CaseError`, whose text is one line
naming the file and the case.
"""

from __future__ import annotations

import tomllib
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from protocol.codec import encode
from protocol.errors import ProtocolError
from protocol.events import Event
from protocol.machine import apply
from protocol.rules import ask, delegate, new_task, work_items
from protocol.types import TaskRecord, WorkItem

__all__ = ["CASES_DIR", "T0", "TIMES", "BadCase", "CaseError", "CaseFile", "Cases", "World", "wire"]

#: Where the case files live (they belong to the generator, not to the tree it writes).
CASES_DIR = Path(__file__).resolve().parent.parent / "cases"

#: A fixed wall clock for every example: 2023-11-14T22:13:20Z.
T0 = 1_700_000_000.0

#: Keys whose value is a time: seconds after T0 in a case file.
TIMES = frozenset({"at", "now", "deadline"})

#: The world's records and work items, by name.
World = dict[str, Any]

_T = TypeVar("_T")
_V = TypeVar("_V")

_RECORD_FIELDS = {f.name: f.type for f in msgspec.structs.fields(TaskRecord)}


class CaseError(Exception):
    """A case file that cannot be read, or a case in it that makes no sense."""

    def __init__(self, path: Path, case: str | None, why: str) -> None:
        self.path, self.case, self.why = path, case, why
        super().__init__(path, case, why)

    def __str__(self) -> str:
        where = _shown(self.path) + (f": case {self.case!r}" if self.case is not None else "")
        return f"{where}: {' '.join(self.why.split())}"


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (shorter in messages)."""
    try:
        return str(path.relative_to(CASES_DIR.parent.parent))
    except ValueError:
        return str(path)


class BadCase(ValueError):
    """A value in a case that does not make sense (the message says why); raised while
    a case is built, it becomes a :class:`CaseError` naming the file and the case."""


def _why(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"no {exc.args[0]!r} (missing, or not a name this file knows)"
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, BadCase) else str(exc)


class CaseFile:
    """One case file, read: its top-level tables, and a context that names the case
    being built in any error."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with path.open("rb") as f:
                self.body: dict[str, Any] = tomllib.load(f)
        except OSError as exc:
            raise CaseError(path, None, f"cannot read it ({exc.strerror or exc})") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise CaseError(path, None, f"not TOML: {exc}") from None

    def array(self, key: str) -> list[Any]:
        """The array ``key`` of the file (of tables or values)."""
        value = self.body.get(key)
        if not isinstance(value, list):
            raise CaseError(self.path, None, f"no array {key!r} (write [[{key}]] tables or {key} = [...])")
        return value

    def value(self, key: str, kind: type[_V]) -> _V:
        """The top-level value ``key``, of type ``kind`` (an integer is a float too)."""
        value = self.body.get(key)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind):
            raise CaseError(self.path, None, f"no {key} = <{kind.__name__}> at the top of the file")
        return value

    def table(self, key: str) -> dict[str, Any]:
        value = self.body.get(key)
        if not isinstance(value, dict):
            raise CaseError(self.path, None, f"no table [{key}]")
        return value

    def each(self, key: str, build: Callable[[dict[str, Any]], _T]) -> list[_T]:
        """``build`` of each table of the array ``key``, any error naming the case (by its
        ``name``, else by its place: ``[[key]] #1`` is the first)."""
        out = []
        for index, table in enumerate(self.array(key)):
            name = table.get("name") if isinstance(table, dict) else None
            with self.case(str(name) if name is not None else f"[[{key}]] #{index + 1}"):
                if not isinstance(table, dict):
                    raise BadCase(f"a case is a table, not {table!r}")
                if name is not None and not isinstance(name, str):
                    raise BadCase(f"a case's name is a string, not {name!r}")
                out.append(build(table))
        return out

    @contextmanager
    def case(self, label: str) -> Iterator[None]:
        """Turn what a malformed case raises into a :class:`CaseError` naming it."""
        try:
            yield
        except CaseError:
            raise
        except (
            KeyError,
            TypeError,
            ValueError,
            IndexError,
            AttributeError,
            msgspec.ValidationError,
            ProtocolError,
        ) as exc:
            raise CaseError(self.path, label, _why(exc)) from None


class Cases:
    """The case files of one directory, each read once, and the world they share."""

    def __init__(self, directory: Path = CASES_DIR) -> None:
        self.directory = directory
        self.files: dict[str, CaseFile] = {}
        self._world: World | None = None

    def file(self, family: str) -> CaseFile:
        if family not in self.files:
            self.files[family] = CaseFile(self.directory / f"{family}.toml")
        return self.files[family]

    @property
    def world(self) -> World:
        """The records and work items of ``world.toml``, by name, built in file order
        (a record derives only from those above it)."""
        if self._world is None:
            source = self.file("world")
            world: World = {}
            for section, build in (("records", record), ("items", item)):
                for name, spec in source.table(section).items():
                    with source.case(f"{section}.{name}"):
                        world[name] = build(world, spec)
            self._world = world
        return self._world

    def record(self, spec: Any) -> TaskRecord:
        return record(self.world, spec)

    def item(self, spec: Any) -> WorkItem:
        return item(self.world, spec)


# --- values ---------------------------------------------------------------------------------


def time(value: Any) -> float:
    """A time of a case file (seconds after T0) as wall-clock time."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadCase(f"a time is a number of seconds after T0, not {value!r}")
    return T0 + value


def keys(table: dict[str, Any], required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    """Refuse a table missing a key in ``required`` or holding one in neither (a typo)."""
    missing = [k for k in required if k not in table]
    unknown = [k for k in table if k not in required and k not in optional]
    if missing or unknown:
        raise BadCase(
            "; ".join(
                ([f"missing {', '.join(missing)}"] if missing else [])
                + ([f"unknown {', '.join(unknown)} (known: {', '.join(required + optional)})"] if unknown else [])
            )
        )


def arguments(function: Callable[..., Any], args: dict[str, Any]) -> dict[str, Any]:
    """``args`` converted to the types of ``function``'s parameters (lists to tuples,
    tables to structs, integers to floats where a float is meant), times from T0."""
    hints = typing.get_type_hints(function)
    out: dict[str, Any] = {}
    for key, value in args.items():
        if key not in hints or key == "return":
            raise BadCase(f"{function.__name__} takes no argument {key!r}")
        out[key] = msgspec.convert(time(value) if key in TIMES else value, hints[key])
    return out


def event(spec: Any) -> Event:
    """A transition from its wire form (``{kind = "claim", actor = ..., ...}``)."""
    if not isinstance(spec, dict):
        raise BadCase(f"an event is a table with a kind, not {spec!r}")
    made: Event = msgspec.convert(spec, Event)
    return made


def _named(world: World, spec: Any, kind: type[_V]) -> _V | dict[str, Any]:
    """The world's ``kind`` named ``spec``, or ``spec`` itself when it is a table."""
    what = "a record" if kind is TaskRecord else "a work item"
    if isinstance(spec, str):
        found = world.get(spec)
        if not isinstance(found, kind):
            raise BadCase(f"no {what[2:]} {spec!r} in world.toml")
        return found
    if not isinstance(spec, dict):
        raise BadCase(f"{what} is a name or a table, not {spec!r}")
    return spec


def record(world: World, spec: Any) -> TaskRecord:
    """A record: a world name, or a table (``world.toml`` lists the forms)."""
    spec = _named(world, spec, TaskRecord)
    if isinstance(spec, TaskRecord):
        return spec
    if "new_task" in spec:
        keys(spec, ("new_task",))
        return new_task(**arguments(new_task, spec["new_task"]))
    if "delegate" in spec or "ask" in spec:
        rule = delegate if "delegate" in spec else ask
        keys(spec, (rule.__name__,))
        args = dict(spec[rule.__name__])
        parent = record(world, args.pop("parent"))
        return rule(parent, **arguments(rule, args))
    keys(spec, ("of",), ("set", "unset", "event", "at"))
    out = record(world, spec["of"])
    changes = {**spec.get("set", {}), **{k: None for k in spec.get("unset", ())}}
    if unknown := [k for k in changes if k not in _RECORD_FIELDS]:
        raise BadCase(f"a task record has no field {', '.join(unknown)}")
    for k, v in changes.items():
        changes[k] = msgspec.convert(time(v) if k in TIMES and v is not None else v, _RECORD_FIELDS[k])
    out = msgspec.structs.replace(out, **changes)
    if "event" in spec:
        out = apply(out, event(spec["event"]), time(spec["at"]))
    elif "at" in spec:
        raise BadCase("`at` without an `event`")
    return out


def item(world: World, spec: Any) -> WorkItem:
    """A work item: a world name; the ``index``-th item a write publishes (``old``, absent
    for a new task, became ``new`` at ``revision``); or one spelled out (``task``, ...,
    ``record``)."""
    spec = _named(world, spec, WorkItem)
    if isinstance(spec, WorkItem):
        return spec
    if "task" in spec:
        return msgspec.convert({**spec, "record": msgspec.to_builtins(record(world, spec["record"]))}, WorkItem)
    keys(spec, ("new", "revision"), ("old", "index"))
    old = record(world, spec["old"]) if "old" in spec else None
    published = work_items(old, record(world, spec["new"]), spec["revision"])
    index = int(spec.get("index", 0))
    if not 0 <= index < len(published):
        raise BadCase(f"that write publishes {len(published)} work items, there is no item {index}")
    return published[index]


def wire(obj: Any) -> Any:
    """``obj`` as the wire has it, in JSON's builtin types."""
    return msgspec.json.decode(encode(obj))
