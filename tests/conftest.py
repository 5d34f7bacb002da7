# The fixtures (broker, mesh_client, agent_procs) the package ships for its users too.
pytest_plugins = ["mesh.pytest_plugin"]

# Hypothesis's per-example deadline (200 ms) measures the machine, not the rule: on a
# loaded 2-core runner a pure function's example can take longer, and the failure says
# nothing about the code. Speed is measured in bench/, never asserted in tests.
from hypothesis import settings  # noqa: E402

settings.register_profile("mesh", deadline=None)
settings.load_profile("mesh")
