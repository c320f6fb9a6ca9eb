"""Logging with the request id on every line.

The id lives in a context variable set by the request middleware; a log-record factory copies it
onto every record when the record is created (so it holds for any logger and any handler, uvicorn's
and pytest's included). Outside a request the id is "-".
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")

LOG_FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"
_HANDLER_MARK = "_robopt_handler"
_installed_factory = False

security_log = logging.getLogger("robopt.security")


def _install_record_factory() -> None:
    global _installed_factory
    if _installed_factory:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)  # type: ignore[arg-type]
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return record

    logging.setLogRecordFactory(factory)
    _installed_factory = True


def configure_logging(level: str = "info") -> None:
    """Idempotent: one stderr handler on the root logger with the request-id format."""
    _install_record_factory()
    numeric = logging.getLevelName(level.upper()) if level != "trace" else 5
    if not isinstance(numeric, int):
        numeric = logging.INFO
    root = logging.getLogger()
    if not any(getattr(h, _HANDLER_MARK, False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        setattr(handler, _HANDLER_MARK, True)
        root.addHandler(handler)
    root.setLevel(numeric)
    # uvicorn's loggers propagate to ours; its access log is replaced by the middleware's line,
    # which is written inside the request and so carries the request id.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    # Alembic narrates every plugin it loads at INFO; its migrations are logged by us.
    logging.getLogger("alembic").setLevel(max(numeric, logging.WARNING))


def security_event(event: str, **fields: object) -> None:
    """A security-relevant event (failed login, refused upload, forbidden access) as one log line."""
    rendered = " ".join(f"{k}={v!r}" for k, v in fields.items())
    security_log.warning("security_event=%s %s", event, rendered)
