"""``mesh ui``: a live web view of the mesh, served by a mesh client (docs/UI.md).

The browser reads nothing from the broker itself: this process follows the mesh, runs
`mesh top`'s analysis and sends each open page only what changed on it, over
server-sent events (docs/ARCHITECTURE.md says why). The page is committed static
files; nothing is built or fetched at run time. Needs the ``ui`` extra (Starlette and
uvicorn), imported only by ``mesh ui``.
"""

from __future__ import annotations

from .board import PAGE_SIZE, Board, Query, Viewer
from .inbox import offered_actions

__all__ = ["PAGE_SIZE", "Board", "Query", "Viewer", "offered_actions"]
