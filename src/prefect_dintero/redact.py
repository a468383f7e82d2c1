"""Keeping secrets out of logs, errors, states and artifacts.

Two nets, applied wherever text leaves the process (log records, and every error message this
package builds): a registry of the secret values this process holds (client secrets, tokens,
codes, the Basic header), and patterns for secrets it never saw, such as a bearer token echoed
back by a proxy or an unknown token in an error body.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict

MASK = "**********"
#: Shorter values would mask ordinary words; real secrets and tokens are far longer.
MIN_SECRET_LENGTH = 8
_MAX_SECRETS = 2000


class SecretRegistry:
    """The secret values this process currently holds (client secrets, tokens, codes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: OrderedDict[str, None] = OrderedDict()

    def add(self, value: str | None) -> None:
        if not value or len(value) < MIN_SECRET_LENGTH:
            return
        with self._lock:
            self._secrets[value] = None
            self._secrets.move_to_end(value)
            while len(self._secrets) > _MAX_SECRETS:
                self._secrets.popitem(last=False)

    def redact(self, text: str) -> str:
        with self._lock:
            secrets = list(self._secrets)
        for secret in secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


REGISTRY = SecretRegistry()


def register_secret(value: str | None) -> None:
    """Mask ``value`` wherever it would appear in a log record from now on."""
    REGISTRY.add(value)


#: Words in a query parameter's name that say its value is a secret: a database URL's
#: ``?password=``, DuckDB's and MotherDuck's ``?motherduck_token=`` and
#: ``?s3_secret_access_key=``, an Azure SAS's ``sig=``, and the like.
SECRET_WORDS = (
    "token",
    "secret",
    "key",
    "password",
    "passwd",
    "pwd",
    "pass",
    "credential",
    "signature",
    "sas",
)
#: Parameter names too short to hold a word, that are secrets all the same.
SECRET_NAMES = frozenset({"sig", "code"})
#: Names that hold a word above but are not secrets: libpq's ``sslkey`` is a file's path.
NOT_SECRET_NAMES = frozenset({"sslkey", "sslcert", "sslrootcert", "state"})


def is_secret_name(name: str) -> bool:
    """Whether a query parameter named ``name`` carries a secret, judged by its name."""
    lowered = name.lower()
    if lowered in NOT_SECRET_NAMES:
        return False
    return lowered in SECRET_NAMES or any(word in lowered for word in SECRET_WORDS)


#: Secrets recognised by their shape, whoever issued them. Each keeps its label and masks the
#: value: an Authorization scheme's credentials, token-like JSON or form fields, a ``code``
#: query parameter, and a URL's ``user:password@``.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9\-._~+/]+=*"), rf"\1\2{MASK}"),
    (
        re.compile(
            r"(?i)([\"']?\b(?:access_token|refresh_token|id_token|client_secret|password|passwd"
            r"|authorization|api[_-]?key|secret)\b[\"']?\s*[:=]\s*[\"']?)([^\"'&\s,;}]+)"
        ),
        rf"\1{MASK}",
    ),
    # Any query parameter whose name says it is a secret (``is_secret_name``). Not ``state``:
    # it is a nonce that travels openly, and a login link must keep it.
    (
        re.compile(
            r"([?&#;](?!(?:sslkey|sslcert|sslrootcert|state)=)"
            r"(?:[\w.-]*?(?:" + "|".join(SECRET_WORDS) + r")[\w.-]*|sig|code)=)([^&#\s\"']+)",
            re.IGNORECASE,
        ),
        rf"\1{MASK}",
    ),
    (re.compile(r"(://[^/\s:@]+:)([^/\s@]+)(@)"), rf"\1{MASK}\3"),
)


def redact(text: str) -> str:
    """``text`` with every registered secret, and anything shaped like one, masked."""
    text = REGISTRY.redact(text)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class SecretMaskingFilter(logging.Filter):
    """Rewrites a record's message with every live secret masked. Never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is the logger's problem, not ours
            return True
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            formatted = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(formatted)
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


_FILTER = SecretMaskingFilter()
DEFAULT_LOGGERS = (
    "prefect_dintero",
    "httpx",
    "httpcore",
    "tenacity",
    "prefect.flow_runs",
    "prefect.task_runs",
)


def install_log_filter(*names: str) -> None:
    """Attach the masking filter to these loggers (idempotent).

    Logger filters see only records created by that exact logger, so every module logger of
    this package gets it through :func:`get_logger`, and the loggers that may carry our requests
    (httpx, Prefect's run loggers) are listed in ``DEFAULT_LOGGERS``.
    """
    for name in names or DEFAULT_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def get_logger(name: str) -> logging.Logger:
    """A logger of this package with the masking filter installed."""
    install_log_filter(*DEFAULT_LOGGERS)
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger
