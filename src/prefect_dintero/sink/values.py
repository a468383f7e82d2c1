"""Typed column values: what a column holds, and whether a value from Dintero fits it."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator, TypeEngine

from ..times import parse_datetime


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on every dialect (SQLite has no timezone type)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> datetime | None:
        dt = parse_datetime(value)
        if dt is not None and dialect.name == "sqlite":
            return dt.replace(tzinfo=None)
        return dt

    def process_result_value(self, value: Any, dialect: Any) -> datetime | None:
        return parse_datetime(value)


JSON_TYPE: TypeEngine[Any] = JSON().with_variant(JSONB(), "postgresql")
COLUMN_TYPES: dict[str, Callable[[], TypeEngine[Any]]] = {
    "text": lambda: Text(),
    "int": lambda: BigInteger(),
    "datetime": lambda: UTCDateTime(),
    "bool": lambda: Boolean(),
}


BIGINT_RANGE = (-(2**63), 2**63 - 1)
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]{1,19}")


class Unfit(ValueError):
    """A value that does not fit its typed column (it stays in ``raw``)."""


def _as_datetime(value: Any) -> datetime:
    parsed = parse_datetime(value)
    if parsed is None:
        raise Unfit("is not an ISO 8601 date-time that UTC can hold")
    return parsed


def _as_int(value: Any) -> int:
    if type(value) is int:
        number = value
    elif isinstance(value, bool):
        raise Unfit("is a boolean, not an integer")
    elif (isinstance(value, float) and math.isfinite(value) and value.is_integer()) or (
        isinstance(value, str) and _INTEGER_TEXT.fullmatch(value.strip())
    ):
        number = int(value)
    else:
        raise Unfit("is not an integer (amounts are integers in minor units)")
    if not BIGINT_RANGE[0] <= number <= BIGINT_RANGE[1]:
        raise Unfit("does not fit a 64-bit integer")
    return number


def _as_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Unfit("is not a boolean")
    return value


def _as_text(value: Any) -> str:
    return value if type(value) is str else dump_json(value)


#: One function per column type, looked up once per column rather than branched on per value;
#: each fits a value to its column or raises ``Unfit`` saying why it does not fit. Amounts are
#: integers in minor units (https://docs.dintero.com/docs/glossary: "33890 is 338.90 NOK"): an
#: integral float (``33890.0``) or a string of digits (``"33890"``) is that integer; anything with
#: a fraction (``338.9``, ``"338.90"``), a non-finite number, a boolean or a number beyond 64 bits
#: does not fit and is never rounded or truncated.
COERCERS = {"datetime": _as_datetime, "int": _as_int, "bool": _as_bool, "text": _as_text}


def dump_json(value: Any) -> str:
    """JSON text for a column: orjson, or ``json`` for what orjson refuses (integers beyond
    64 bits). Non-finite numbers never get here: they were decoded as text."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value)


def sqlite_datetime(value: datetime) -> str:
    """A UTC datetime as SQLAlchemy stores it in SQLite (``2026-01-02 03:04:05.000000``), so
    old and new rows compare as text in SQL."""
    if value.tzinfo is UTC:  # what parse_datetime gives: cut the "+00:00" off
        return value.isoformat(sep=" ", timespec="microseconds")[:-6]
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(sep=" ", timespec="microseconds")


# -- strings a database cannot store --------------------------------------------------------------
#
# Dintero's JSON may carry a NUL (``\u0000``) or a lone surrogate (``\ud800``) in a string: JSON
# allows both. PostgreSQL stores neither in text or JSONB, SQLite's driver cannot encode a lone
# surrogate, and DuckDB refuses it as invalid UTF-8. One such value must not fail a stream on
# every run, so such a string is stored cleaned: in a typed column with U+FFFD in place of each
# odd character; in ``raw`` as ``{"$dintero_escaped": text}``, where ``text`` is the string as
# JSON text without its quotes (ASCII only), so ``json.loads('"' + text + '"')`` gives back the
# original. A key is escaped the same way, as ``"$dintero_escaped:" + text``.

#: The key of an object that stands in ``raw`` for a string with characters a database cannot
#: store.
ESCAPED = "$dintero_escaped"
REPLACEMENT = "\ufffd"


def storable(objects: Any) -> bool:
    """Whether every string in ``objects`` can be stored as it is (no NUL, no lone surrogate).

    One ``orjson.dumps`` of the page: it refuses lone surrogates, and writes a NUL as
    ``\\u0000``, which no other character becomes.
    """
    try:
        dumped = orjson.dumps(objects)
    except TypeError:  # a lone surrogate, or an integer beyond 64 bits: look string by string
        return not _has_odd(objects)
    return b"\\u0000" not in dumped


#: A NUL, or a surrogate code point (in a Python string one is always unpaired: JSON's
#: escaped pairs are decoded into the character they stand for).
_ODD = re.compile("[\\x00\\ud800-\\udfff]")


def is_odd(text: str) -> bool:
    """Whether a string holds a NUL or a lone surrogate."""
    return _ODD.search(text) is not None


def _has_odd(value: Any) -> bool:
    if isinstance(value, str):
        return is_odd(value)
    if isinstance(value, dict):
        return any(_has_odd(k) or _has_odd(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_odd(v) for v in value)
    return False


def escape_text(text: str) -> str:
    """A string as JSON text without its quotes, ASCII only: every odd character escaped."""
    return json.dumps(text, ensure_ascii=True)[1:-1]


def unescape_text(escaped: str) -> str:
    """The original of :func:`escape_text`'s result."""
    return json.loads(f'"{escaped}"')


def escape_odd(value: Any, path: str, found: list[str]) -> Any:
    """``value`` for ``raw``: odd strings replaced by ``{"$dintero_escaped": …}``, odd keys by
    ``"$dintero_escaped:…"``; the paths of what was escaped are added to ``found``."""
    if isinstance(value, str):
        if is_odd(value):
            found.append(path or "(the object)")
            return {ESCAPED: escape_text(value)}
        return value
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            name = key
            if isinstance(key, str) and is_odd(key):
                name = f"{ESCAPED}:{escape_text(key)}"
                found.append(f"{path}.(a key)" if path else "(a key)")
            out[name] = escape_odd(item, f"{path}.{name}" if path else str(name), found)
        return out
    if isinstance(value, list):
        return [escape_odd(item, f"{path}[{i}]", found) for i, item in enumerate(value)]
    return value


def replace_odd(value: Any) -> Any:
    """``value`` for typed columns: each NUL and lone surrogate replaced by U+FFFD."""
    if isinstance(value, str):
        if not is_odd(value):
            return value
        return _ODD.sub(REPLACEMENT, value)
    if isinstance(value, dict):
        return {replace_odd(k): replace_odd(v) for k, v in value.items()}
    if isinstance(value, list):
        return [replace_odd(v) for v in value]
    return value
