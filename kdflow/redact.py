"""Keep secrets out of what people read: MLflow params and tags, logs, reports, the audit trail's actor.

A URI's password (``scheme://user:password@host``) and the values of credential-like query parameters
(``?password=...``, ``X-Amz-Signature=...``, ``token=...``) become ``***``; everything else is kept, so a reader
still sees which server, bucket or database was used.
"""

from __future__ import annotations

import getpass
import logging
import os
import re
import socket
from typing import Any

MASK = "***"

# scheme://user:password@  ->  scheme://user:***@   (the user name stays: it says who connected)
_URI_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*):(?P<secret>[^@/\s]+)@")
# ?password=...&X-Amz-Credential=...  ->  the value masked
_SECRET_PARAM = re.compile(
    r"(?P<head>[?&;](?:password|passwd|pwd|secret|token|access_token|api_key|apikey|key|sig|signature"
    r"|x-amz-signature|x-amz-credential|x-amz-security-token|aws_secret_access_key)=)(?P<secret>[^&;\s#]+)",
    re.IGNORECASE,
)
# KEY=value in free text for the environment variables that hold secrets.
_SECRET_ENV = re.compile(
    r"(?P<head>\b(?:AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN|MLFLOW_TRACKING_PASSWORD|MLFLOW_TRACKING_TOKEN"
    r"|PREFECT_API_KEY|PREFECT_API_AUTH_STRING|PGPASSWORD)=)(?P<secret>\S+)"
)


def redact_text(text: str) -> str:
    """``text`` with every URI password, credential query value and secret ``KEY=value`` replaced by ``***``."""
    if not text:
        return text
    text = _URI_PASSWORD.sub(lambda m: f"{m.group('head')}:{MASK}@", text)
    for pattern in (_SECRET_PARAM, _SECRET_ENV):
        text = pattern.sub(lambda m: f"{m.group('head')}{MASK}", text)
    return text


def redact(value: Any) -> Any:
    """``value`` with :func:`redact_text` applied to every string inside it (dicts, lists, tuples; keys kept)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value


def _redacted(record: logging.LogRecord) -> logging.LogRecord:
    """Replace ``record``'s message by its redacted rendering when it holds a secret."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a malformed record is the handler's problem, not ours
        return record
    cleaned = redact_text(message)
    if cleaned != message:
        record.msg, record.args = cleaned, None
    return record


def install_log_redaction() -> None:
    """Redact every log record when it is created — kdflow's, Prefect's run loggers (whose records are shipped to
    the Prefect API and UI), MLflow's, any library's — by wrapping the process's log-record factory (idempotent).
    A record factory, unlike a logger filter, also covers child loggers and records propagated to any handler."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "kdflow_redacting", False):
        return

    def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return _redacted(factory(*args, **kwargs))

    redacting_factory.kdflow_redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacting_factory)


def actor(prefix: str = "cli") -> str:
    """Who is acting, for the audit trail: ``prefix:user@host``. The user comes from the OS (``getpass``: the
    login environment variables, then the password database), and from the numeric uid when neither knows
    it — never ``unknown``."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no LOGNAME/USER/... and no passwd entry (a bare container)
        user = f"uid{os.getuid()}" if hasattr(os, "getuid") else "unknown-user"
    return f"{prefix}:{user}@{socket.gethostname()}"
