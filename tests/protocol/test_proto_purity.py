"""protocol/ is sans-IO: it imports only the standard library and msgspec, and its
public API is what ``__all__`` says."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import protocol

PACKAGE = Path(protocol.__file__).parent
FORBIDDEN = ("nats", "anyio", "litellm", "structlog", "asyncio", "socket", "mesh", "agents", "tools")
#: File and console I/O: the spec generator that needs them lives in tools/, outside the package.
NO_FILE_IO = ("argparse", "pathlib", "io", "os", "shutil", "tempfile", "glob", "subprocess")
#: PyNaCl and nkeys: signing (protocol/signing.py) is part of the protocol; both are pure
#: computation (ed25519, the nkey encoding), and imported only where a signature is made
#: or checked.
ALLOWED_THIRD_PARTY = {"msgspec", "nacl", "nkeys"}


def _top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_package_imports_only_stdlib_and_msgspec() -> None:
    """An AST scan of every module, including imports inside functions."""
    sources = sorted(PACKAGE.rglob("*.py"))
    assert sources, PACKAGE
    stdlib = set(sys.stdlib_module_names)
    for path in sources:
        imported = _top_level_imports(path)
        foreign = {m for m in imported if m not in stdlib and m not in ALLOWED_THIRD_PARTY and m != "__future__"}
        assert not foreign, f"{path.relative_to(PACKAGE.parent)} imports {sorted(foreign)}"
        io = imported & set(FORBIDDEN)
        assert not io, f"{path.relative_to(PACKAGE.parent)} imports {sorted(io)}: protocol/ does no I/O"
        files = imported & set(NO_FILE_IO)
        assert not files, f"{path.relative_to(PACKAGE.parent)} imports {sorted(files)}: protocol/ does no file I/O"


def test_package_opens_and_prints_nothing() -> None:
    """No call of the builtins that read files or write to the console."""
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id not in {"open", "print", "input"}, f"{path.name}:{node.lineno} calls {node.func.id}"


def test_importing_protocol_loads_no_runtime_library() -> None:
    """What a fresh interpreter has loaded after ``import protocol``."""
    code = "import json, sys; import protocol; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=PACKAGE.parent)
    loaded = {m.split(".")[0] for m in json.loads(out.stdout)}
    for name in ("nats", "anyio", "litellm", "structlog", "argparse", "tools", "nacl", "nkeys"):
        assert name not in loaded, f"import protocol loaded {name}"


def test_all_is_complete_and_resolvable() -> None:
    """Every public name is in ``__all__`` exactly once and resolves."""
    assert len(protocol.__all__) == len(set(protocol.__all__))
    for name in protocol.__all__:
        assert hasattr(protocol, name), name
    public = {n for n in vars(protocol) if not n.startswith("_")}
    modules = {"cards", "codec", "core", "errors", "events", "limits", "machine", "names", "rules", "signing", "types"}
    assert public - modules - set(protocol.__all__) == set()


def test_module_all_lists_are_resolvable() -> None:
    import importlib

    for module in (
        "cards",
        "codec",
        "core",
        "errors",
        "events",
        "limits",
        "machine",
        "names",
        "rules",
        "signing",
        "types",
    ):
        mod = importlib.import_module(f"protocol.{module}")
        for name in mod.__all__:
            assert hasattr(mod, name), f"protocol.{module}.{name}"


def test_no_clock_or_randomness_in_protocol() -> None:
    """Time and randomness are arguments: no module calls the clock or a RNG."""
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = _top_level_imports(path)
        assert not imported & {"time", "random", "secrets", "uuid", "datetime"}, path
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                assert (node.value.id, node.attr) not in {("os", "urandom"), ("os", "getpid")}, path
