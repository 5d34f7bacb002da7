import sys
from pathlib import Path

# The fixtures (broker, mesh_client, agent_procs) the package ships for its users too.
pytest_plugins = ["mesh.pytest_plugin"]

# Test helpers beside the tests (raw_writes.py): pytest runs with --import-mode=importlib,
# which leaves sys.path alone, so this directory is put on it (helper names are unique).
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

# Hypothesis's per-example deadline (200 ms) measures the machine, not the rule: on a
# loaded 2-core runner a pure function's example can take longer, and the failure says
# nothing about the code. Speed is measured in bench/, never asserted in tests.
from hypothesis import settings  # noqa: E402

settings.register_profile("mesh", deadline=None)
settings.load_profile("mesh")
