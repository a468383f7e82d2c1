"""Rows from API objects: typed columns extracted and fitted, one row per key, the newest."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..redact import get_logger
from ..streams.catalog import ChildTable, Stream
from .values import COERCERS, ESCAPED, Unfit, escape_odd, replace_odd, storable

#: Text columns keep a string as it is (no call); anything else goes through this.
_as_text = COERCERS["text"]

logger = get_logger(__name__)

#: Values named, per page, in warnings about values that do not fit their column.
WARN_UNFIT = 5


#: How a typed column is filled: its name, the object's key when the path is one step (None:
#: walk ``column.extract``), the column, and the function fitting a value to its type (None:
#: text, where a string is kept as it is).
ColumnPlan = tuple[str, str | None, Any, Callable[[Any], Any] | None]


class RowBuilder:
    """Builds a stream's rows; each stream's column plan is worked out once.

    The objects reach it checked (each is a dict with its primary key: the paginator checks
    every page before the next one is asked for). This loop runs for every value of every
    row, so the common cases (a top-level key, a string for a text column) take no call.
    """

    def __init__(self) -> None:
        self._plans: dict[str, list[ColumnPlan]] = {}

    def columns(self, stream: Stream) -> list[ColumnPlan]:
        """The stream's typed columns (its key aside), as :data:`ColumnPlan`."""
        plan = self._plans.get(stream.name)
        if plan is None:
            plan = []
            for col in stream.columns:
                if col.name == stream.primary_key:
                    continue
                path = col.path or col.name
                key = path if "." not in path else None
                plan.append(
                    (col.name, key, col, None if col.type == "text" else COERCERS[col.type])
                )
            self._plans[stream.name] = plan
        return plan

    def build(
        self, stream: Stream, account_id: str, objects: list[dict], now: datetime
    ) -> list[dict]:
        """Rows for the stream's table.

        A value that does not fit its typed column is stored as NULL there, with a warning
        naming the stream, the object and the field; the ``raw`` JSON keeps it. A string with a
        character no database here can store (a NUL, a lone surrogate) is stored cleaned, with
        a warning (``values.escape_odd``). One odd value must not fail the stream on every run.
        """
        rows, unfit, odd = [], [], []
        pk = stream.primary_key
        plan = self.columns(stream)
        clean = storable(objects)  # one check per page; the rare odd page goes object by object
        for obj in objects:
            raw = obj
            if not clean:
                fields: list[str] = []
                raw = escape_odd(obj, "", fields)
                if fields:
                    obj = replace_odd(obj)
                    odd.append((obj[pk], fields))
            row = {"account_id": account_id, pk: obj[pk], "raw": raw, "synced_at": now}
            for name, key, col, to_column in plan:
                value = obj.get(key) if key is not None else col.extract(obj)
                if value is None:
                    row[name] = None
                elif to_column is None:
                    row[name] = value if type(value) is str else _as_text(value)
                else:
                    try:
                        row[name] = to_column(value)
                    except Unfit as reason:
                        row[name] = None
                        unfit.append((obj[pk], col.path or name, value, reason))
            rows.append(row)
        for key, field_name, value, why in unfit[:WARN_UNFIT]:
            logger.warning(
                "%s %s: %s %.60r %s; stored as NULL in its column (the raw JSON keeps it)",
                stream.name,
                key[:80],
                field_name,
                value,
                why,
            )
        for key, fields in odd[:WARN_UNFIT]:
            logger.warning(
                "%s %s: %s held characters no database here can store (a NUL or a lone "
                "surrogate); stored with U+FFFD in their columns, and escaped in raw as "
                '{"%s": ...}, from which the original can be recovered',
                stream.name,
                str(key)[:80],
                ", ".join(fields[:10]),
                ESCAPED,
            )
        if len(odd) > WARN_UNFIT:
            logger.warning(
                "%s: %d more objects on this page held such characters",
                stream.name,
                len(odd) - WARN_UNFIT,
            )
        if len(unfit) > WARN_UNFIT:
            logger.warning(
                "%s: %d more values on this page did not fit their columns",
                stream.name,
                len(unfit) - WARN_UNFIT,
            )
        return rows


def child_rows(child: ChildTable, account_id: str, parents: list[dict]) -> list[dict]:
    """The child table's rows for these parent objects: each item's typed columns. A value
    that does not fit its column is NULL there (the parent's ``raw`` keeps it); a text with
    a character no database here stores is stored cleaned."""
    rows = []
    for parent in parents:
        parent_key = parent.get("id")
        for item in child.items(parent):
            row: dict[str, Any] = {"account_id": account_id, child.parent_key: parent_key}
            for col in child.columns:
                value = col.extract(item)
                if value is not None:
                    try:
                        value = COERCERS[col.type](value)
                    except (Unfit, TypeError, ValueError):
                        value = None
                    if type(value) is str:
                        value = replace_odd(value)
                row[col.name] = value
            rows.append(row)
    return rows


@dataclass(frozen=True)
class Versioning:
    """What dates a copy of an object: its version column, and its deletion.

    A deletion is a version too: a tombstone (``deleted`` set) is dated by it, and is replaced
    only by a copy that is known to be newer (a version that is there, trusted and at least as
    late). A copy of unknown age (no version) replaces a live row, as before, but never a
    tombstone: an older live copy (a slow run, a replayed page) must not bring a deleted
    customer's name and e-mail back.
    """

    version: str | None
    deleted: str | None = None

    def of(self, row: dict) -> tuple[datetime | None, bool]:
        """The row's version and whether it is a tombstone."""
        if self.deleted is not None and row.get(self.deleted) is not None:
            return row[self.deleted], True
        return (row[self.version] if self.version else None), False

    def replaces(self, new_row: dict, old: tuple[datetime | None, bool], until: datetime) -> bool:
        new, _ = self.of(new_row)
        return replaces(new, old[0], until, old_deleted=old[1])


def newest_per_key(
    rows: list[dict], pk: str, versioning: Versioning, until: datetime
) -> list[dict]:
    """One row per key, the newest: one statement must not touch a row twice."""
    unique: dict[str, dict] = {}
    for row in rows:
        current = unique.get(row[pk])
        if current is None or (
            versioning.version is None or versioning.replaces(row, versioning.of(current), until)
        ):
            unique[row[pk]] = row
    return list(unique.values())


def replaces(
    new: datetime | None,
    old: datetime | None,
    trusted_until: datetime,
    *,
    old_deleted: bool = False,
) -> bool:
    """Whether a copy versioned ``new`` may replace one versioned ``old``.

    An older copy never replaces a newer one. A version that is missing, or later than
    ``trusted_until`` (now plus the clock skew), tells nothing: such a copy replaces and is
    replaced, so one row dated 2099 can never freeze its row against real changes. A tombstone
    (``old_deleted``) is the exception: only a copy surely as new replaces it.
    """
    if old_deleted:
        if old is None or old > trusted_until:
            return True
        return new is not None and old <= new <= trusted_until
    if new is None or old is None or new > trusted_until or old > trusted_until:
        return True
    return new >= old
