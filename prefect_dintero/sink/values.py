"""Typed column values: what a column holds, and whether a value from Dintero fits it."""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from typing import Any

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


def coerce(kind: str, value: Any) -> Any:
    """A value for a typed column, or ``Unfit`` saying why it does not fit.

    Amounts are integers in minor units (https://docs.dintero.com/docs/glossary: "33890 is
    338.90 NOK"). An integral float (``33890.0``) or a string of digits (``"33890"``) is that
    integer; anything with a fraction (``338.9``, ``"338.90"``), a non-finite number, a boolean
    or a number beyond 64 bits does not fit and is never rounded or truncated.
    """
    if value is None:
        return None
    if kind == "datetime":
        parsed = parse_datetime(value)
        if parsed is None:
            raise Unfit("is not an ISO 8601 date-time that UTC can hold")
        return parsed
    if kind == "int":
        if isinstance(value, bool):
            raise Unfit("is a boolean, not an integer")
        whole_float = isinstance(value, float) and math.isfinite(value) and value.is_integer()
        digits = isinstance(value, str) and _INTEGER_TEXT.fullmatch(value.strip())
        if not (isinstance(value, int) or whole_float or digits):
            raise Unfit("is not an integer (amounts are integers in minor units)")
        number = int(value)
        if not BIGINT_RANGE[0] <= number <= BIGINT_RANGE[1]:
            raise Unfit("does not fit a 64-bit integer")
        return number
    if kind == "bool":
        if not isinstance(value, bool):
            raise Unfit("is not a boolean")
        return value
    return value if isinstance(value, str) else json.dumps(value)
