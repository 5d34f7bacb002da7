"""``python -m tools.spec``: write the generated protocol files, or check them for drift."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from .cases import CASES_DIR, CaseError, Cases
from .files import WriteError, check, write

__all__ = ["main"]

_PROG = "python -m tools.spec"

_DESCRIPTION = """\
Generate the protocol's published files from the code, or check them for drift.

It writes, under the repository root:
  protocol/schema/*.json    JSON Schemas of every wire message
  protocol/vectors/*.json   conformance vectors: transitions, rules, names, decode,
                            resources, limits
  docs/PROTOCOL.md          the generated sections only (between BEGIN/END GENERATED
                            markers); the prose around them is left alone

The vectors' inputs are read from the case files, tools/cases/*.toml (docs/DEVELOPING.md
says how to add a case); the expected outputs are what the protocol's code gives for them.
A JSON file under protocol/schema or protocol/vectors that the generator no longer makes is
reported by --check and removed by a write.

Exit status: 0 done (or up to date), 1 --check found drift, 2 an error (a bad argument, an
unreadable or malformed case file, a file that cannot be written)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: what was wrong, and where the help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=_PROG, description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 listing each file that drifted")
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(__file__).resolve().parent.parent.parent,
        help="repository root to write or check (default: this checkout)",
    )
    parser.add_argument(
        "--cases",
        type=Path,
        default=CASES_DIR,
        metavar="DIR",
        help="directory of the case files (default: tools/cases)",
    )
    return parser


def _fail(message: str) -> int:
    print(f"{_PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.root.is_dir():
        return _fail(f"--root {args.root}: not a directory")
    if not args.cases.is_dir():
        return _fail(f"--cases {args.cases}: not a directory")
    cases = Cases(args.cases)
    try:
        if args.check:
            return _report(check(args.root, cases))
        changed = write(args.root, cases)
    except (CaseError, WriteError) as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{exc.filename or ''}: {exc.strerror or exc}")
    for line in changed or ["protocol artifacts are up to date"]:
        print(line)
    return 0


def _report(problems: list[str]) -> int:
    for problem in problems:
        print(f"drift: {problem}", file=sys.stderr)
    if problems:
        print("run `python -m tools.spec` and review the diff", file=sys.stderr)
        return 1
    print("protocol artifacts are up to date")
    return 0
