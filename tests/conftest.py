# The fixtures (broker, mesh_client, agent_procs) the package ships for its users too.
pytest_plugins = ["mesh.pytest_plugin"]
