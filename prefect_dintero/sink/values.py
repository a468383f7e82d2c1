"""Typed column values: what a column holds, and whether a value from Dintero fits it."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator

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


JSON_TYPE = JSON().with_variant(JSONB(), "postgresql")
COLUMN_TYPES = {
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


#: One function per column type, looked up once per column rather than branched on per value.
COERCERS = {"datetime": _as_datetime, "int": _as_int, "bool": _as_bool, "text": _as_text}


def coerce(kind: str, value: Any) -> Any:
    """A value for a typed column, or ``Unfit`` saying why it does not fit.

    Amounts are integers in minor units (https://docs.dintero.com/docs/glossary: "33890 is
    338.90 NOK"). An integral float (``33890.0``) or a string of digits (``"33890"``) is that
    integer; anything with a fraction (``338.9``, ``"338.90"``), a non-finite number, a boolean
    or a number beyond 64 bits does not fit and is never rounded or truncated.
    """
    return None if value is None else COERCERS[kind](value)


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
