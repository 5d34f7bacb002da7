"""Generate the protocol's published artifacts from the code, and check them for drift.

    python -m tools.spec            # (re)write every artifact
    python -m tools.spec --check    # exit 1, listing every artifact that drifted
    python -m tools.spec --help     # what it writes, and its exit statuses

The artifacts are what an implementer in another language works from:

- ``protocol/schema/*.json``: JSON Schemas of every wire message (``msgspec.json.schema``,
  its descriptions normalized with ``inspect.cleandoc``, plus the name patterns the
  decoders enforce);
- ``protocol/vectors/*.json``: conformance vectors: transitions (record + event + time
  -> next record, or the refusal), the other rules (routing, work items, deliveries,
  waiting, delegation...), names, decoding, resources and limits;
- the generated sections of ``docs/PROTOCOL.md``, between ``<!-- BEGIN GENERATED: x -->``
  and ``<!-- END GENERATED: x -->``: the state diagram and transition table (from
  :data:`protocol.machine.TRANSITIONS`), refusals, message examples, names, constants.

The vectors' inputs are data, ``tools/cases/<family>.toml`` (read by :mod:`.cases`); each
module here runs the protocol's pure functions on one family's cases and writes what they
give. The few families that are computed rather than listed (the sweeps over the
transition table, the limits, the resources) say why in their module.

The generator owns ``protocol/schema/`` and ``protocol/vectors/``: a JSON file there that
it no longer makes is reported by ``--check`` and removed by a write.

It lives outside ``protocol/`` because it reads and writes files, parses arguments and
prints, and ``protocol/`` promises no I/O; it is a build tool of the repository, not part
of any agent, and imports only the standard library, msgspec, ``protocol`` and the
runtime's default settings (``mesh/settings.py``, for the resource vectors).
"""

from .cases import CASES_DIR, CaseError, Cases
from .cli import main
from .docs import doc_sections, render_doc
from .files import Artifact, WriteError, artifacts, check, write
from .limits import limit_vectors
from .schemas import SCHEMAS, json_schema, schema
from .transitions import STATES, transition_vectors

__all__ = [
    "CASES_DIR",
    "SCHEMAS",
    "STATES",
    "Artifact",
    "CaseError",
    "Cases",
    "WriteError",
    "artifacts",
    "check",
    "doc_sections",
    "json_schema",
    "limit_vectors",
    "main",
    "render_doc",
    "schema",
    "transition_vectors",
    "write",
]
