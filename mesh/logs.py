"""structlog set-up for mesh processes: readable lines on stderr, or JSON lines with
``MESH_LOG=json``; level from ``MESH_LOG_LEVEL`` (default info)."""

from __future__ import annotations

import logging
import os
import sys

import structlog

__all__ = ["configure_logging"]


def configure_logging(level: str | None = None) -> None:
    name = (level or os.environ.get("MESH_LOG_LEVEL", "info")).upper()
    numeric = getattr(logging, name, logging.INFO)
    renderer: structlog.types.Processor
    if os.environ.get("MESH_LOG") == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
