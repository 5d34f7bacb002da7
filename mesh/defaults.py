"""Defaults shared by the client and the CLI, importable without the runtime (and so
without nats-py: the CLI decides how nats-py is imported, see ``mesh agent run``)."""

from __future__ import annotations

import os

__all__ = ["DEFAULT_SERVER", "default_server", "parse_duration", "parse_bytes", "MAX_BYTES", "STREAM_MAX_CONSUMERS"]

DEFAULT_SERVER = "nats://127.0.0.1:4222"
#: consumers a stream of the mesh may have: set on each, since nats-server 2.15 caps a
#: stream that sets none at its `default_max_consumers` (1,000): the work stream has a
#: queue per capability in use, the others a consumer per reader
STREAM_MAX_CONSUMERS = 65536


def default_server() -> str:
    """The server URL commands use without ``--server``: ``MESH_SERVER``, else local."""
    return os.environ.get("MESH_SERVER", DEFAULT_SERVER)


_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
#: the largest size a JetStream limit holds (a signed 64-bit count of bytes)
MAX_BYTES = 2**63 - 1
_BYTE_UNITS = {"kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4, "kb": 1000, "mb": 1000**2, "gb": 1000**3}


def parse_duration(text: str) -> float:
    """'30s', '2m', '500ms', '1h', '7d' or plain seconds; ValueError says what is wrong."""
    t = text.strip().lower()
    for suffix in ("ms", "s", "m", "h", "d"):
        if t.endswith(suffix) and t[: -len(suffix)].replace(".", "", 1).isdigit():
            value = float(t[: -len(suffix)]) * _DURATION_UNITS[suffix]
            break
    else:
        try:
            value = float(t)
        except ValueError:
            raise ValueError(f"invalid duration {text!r}: use e.g. 30s, 2m, 500ms, 7d or a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"duration must be positive, got {text!r}")
    return value


def parse_bytes(text: str) -> int:
    """'10GiB', '500MB', '0' or a plain number of bytes, up to :data:`MAX_BYTES`;
    ValueError says what is wrong."""
    t = text.strip().lower().replace(" ", "")
    number, factor = t, 1
    for suffix, unit in sorted(_BYTE_UNITS.items(), key=lambda kv: -len(kv[0])):
        if t.endswith(suffix):
            number, factor = t[: -len(suffix)], unit
            break
    if not (number.isdigit() or (factor > 1 and number.replace(".", "", 1).isdigit())):
        raise ValueError(f"invalid size {text!r}: use e.g. 10GiB, 500MB or a number of bytes (0 for no limit)")
    # (a float of hundreds of digits is inf; an int of thousands is refused by int())
    value: float = (int(number) if factor == 1 else float(number) * factor) if len(number) <= 30 else float("inf")
    if value > MAX_BYTES:
        raise ValueError(f"size {text!r} is too large: at most {MAX_BYTES} bytes (8 EiB)")
    return int(value)
