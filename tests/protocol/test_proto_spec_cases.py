"""The generator's case files (tools/cases/*.toml) and its command line: a case file that
cannot be used, or a bad argument, is one line on stderr and exit status 2, naming the
file and the case; never a traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import protocol as p
from tools import spec

ROOT = Path(p.__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.spec", *args], capture_output=True, text=True, cwd=ROOT, check=False
    )


@pytest.fixture
def cases(tmp_path: Path) -> Path:
    """A copy of the case files, to break."""
    return Path(shutil.copytree(spec.CASES_DIR, tmp_path / "cases"))


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_every_case_file_is_read() -> None:
    """Each file in tools/cases is a family the generator reads (a file it ignored would
    be cases that silently vanish from the vectors)."""
    made = spec.Cases()
    spec.artifacts(made)
    spec.doc_sections(made)
    assert {f.stem for f in spec.CASES_DIR.glob("*.toml")} == set(made.files)


@pytest.mark.parametrize(
    ("file", "old", "new", "case", "why"),
    [
        (
            "transitions.toml",
            'record = "held_without_item"\nevent = { kind = "renew"',
            'record = "held_without_itm"\nevent = { kind = "renew"',
            "'working/renew by an owner holding no work item (its sign of life)'",
            "no record 'held_without_itm' in world.toml",
        ),
        (
            "transitions.toml",
            '{ kind = "claim", actor = "agent-a", ticket = 41 }',
            '{ kind = "claim", actor = "agent-a", ticket = "41" }',
            "'open/claim -> working (under the work item the claimer holds)'",
            "Expected `int | null`, got `str` - at `$.ticket`",
        ),
        (
            "work_items.toml",
            'new = "review_held"\nrevision = 3',
            'new = "review_held"\nrevison = 3',
            "'a review slot taken: none'",
            "missing revision; unknown revison",
        ),
        (
            "world.toml",
            "ticket = 51 }\nat = 62",
            'ticket = 51 }\nat = "soon"',
            "'records.review_held'",
            "a time is a number of seconds after T0, not 'soon'",
        ),
        (
            "decode.toml",
            'field = "epoch"\ntoken = "1"\n',
            'field = "epochs"\ntoken = "1"\n',
            "'[[number]] #1'",
            "the record has no field 'epochs'",
        ),
        (
            "delegation.toml",
            'args = { capability = "translate", instruction = "Translate to French." }',
            'args = "translate"',
            '"handoff: one hop fewer, half the budget, the parent\'s deadline"',
            "AttributeError",
        ),
    ],
)
def test_a_malformed_case_is_one_line_naming_file_and_case(
    cases: Path, file: str, old: str, new: str, case: str, why: str
) -> None:
    edit(cases / file, old, new)
    for mode in (["--check"], []):
        # A write fails before it writes anything: the case files are read first.
        result = run(*mode, "--cases", str(cases), "--root", str(cases))
        assert result.returncode == 2, result.stderr
        assert result.stdout == ""
        line = result.stderr.removesuffix("\n")
        assert "\n" not in line and "Traceback" not in line
        assert line.startswith(f"python -m tools.spec: error: {cases / file}: case {case}: "), line
        assert why in line, line
    assert not (cases / "protocol").exists()


def test_a_case_file_that_is_not_toml_or_is_missing(cases: Path) -> None:
    with (cases / "trail_gap.toml").open("a", encoding="utf-8") as f:
        f.write("[[case\n")
    result = run("--check", "--cases", str(cases))
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"python -m tools.spec: error: {cases / 'trail_gap.toml'}: not TOML: "
        "Expected ']]' at the end of an array declaration (at line "
    )
    assert result.stderr.count("\n") == 1
    (cases / "names.toml").unlink()
    shutil.copy(spec.CASES_DIR / "trail_gap.toml", cases / "trail_gap.toml")
    result = run("--check", "--cases", str(cases))
    assert (result.returncode, result.stderr) == (
        2,
        f"python -m tools.spec: error: {cases / 'names.toml'}: cannot read it (No such file or directory)\n",
    )


def test_errors_name_the_repository_files_as_the_repository_does() -> None:
    error = spec.CaseError(spec.CASES_DIR / "world.toml", "records.open", "why\nnot")
    assert str(error) == "tools/cases/world.toml: case 'records.open': why not"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--bogus"], "unrecognized arguments: --bogus (see `python -m tools.spec --help`)"),
        (["--root", "/nonexistent/x"], "--root /nonexistent/x: not a directory"),
        (["--check", "--cases", "/nonexistent/x"], "--cases /nonexistent/x: not a directory"),
    ],
)
def test_a_bad_argument_is_one_line(args: list[str], error: str) -> None:
    result = run(*args)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"python -m tools.spec: error: {error}\n")


def test_help_says_what_it_writes() -> None:
    result = run("--help")
    assert result.returncode == 0
    for written in ("protocol/schema/*.json", "protocol/vectors/*.json", "docs/PROTOCOL.md", "tools/cases/*.toml"):
        assert written in result.stdout, written


def test_docs_without_markers_are_one_line_on_write(tmp_path: Path) -> None:
    for folder in ("protocol/schema", "protocol/vectors", "docs"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    edit(tmp_path / "docs/PROTOCOL.md", "<!-- END GENERATED: names -->", "")
    result = run("--root", str(tmp_path))
    assert (result.returncode, result.stderr) == (
        2,
        "python -m tools.spec: error: docs/PROTOCOL.md: no markers for generated sections names "
        "(nothing written to it)\n",
    )
