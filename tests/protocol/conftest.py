"""The protocol tests share Hypothesis strategies in ``proto_strategies.py``.

pytest runs with ``--import-mode=importlib``, which leaves ``sys.path`` alone, so this
directory is put on it here (once, before the test modules are collected). The helper's
name is unique across the test tree for that reason.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
