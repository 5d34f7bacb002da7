"""``python -m tools.spec``: see :mod:`tools.spec.cli`."""

from .cli import main

raise SystemExit(main())
