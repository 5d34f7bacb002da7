"""Build tools of the repository (not installed with the package): ``python -m tools.spec``
generates the protocol's published artifacts from ``protocol/`` and checks them for drift."""
