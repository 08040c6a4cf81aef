"""Structured logging: structlog key/value events, JSON in production, readable on a terminal.

Keys are stable (``app``, ``tenant``, ``commit``, ``signer``, ``trigger``,
``outcome``, ``reason``) so the audit trail can be searched and alerted on.
Messages that reach a log line have already been scrubbed of credentials
where they were made (the git and kube layers).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def configure(*, json: bool | None = None, level: int = logging.INFO) -> None:
    """Set up structlog once; JSON when not on a terminal unless told otherwise."""
    use_json = (not sys.stderr.isatty()) if json is None else json
    renderer: Any = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def audit() -> Any:  # noqa: ANN401 - structlog's bound logger is dynamically typed
    """The audit logger: one line per change attempt."""
    return structlog.get_logger("gitward.audit").bind(event_kind="audit")
