from mesh.testing import agent_procs, broker, mesh_client  # noqa: F401  (fixtures)
