"""The inference server's logs: one JSON object per line on stderr (CloudWatch Logs Insights)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

log = logging.getLogger("ichseg.endpoint")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: what CloudWatch Logs Insights can query field by field."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str | None = None) -> None:
    """Send every log record to stderr as JSON (idempotent; ``ICHSEG_LOG_LEVEL`` sets the level)."""
    root = logging.getLogger()
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    root.setLevel(level or os.environ.get("ICHSEG_LOG_LEVEL", "INFO"))


def event(level: int, message: str, **fields: Any) -> None:
    """Log ``message`` with ``fields`` as the JSON line's own keys."""
    log.log(level, message, extra={"fields": fields})
