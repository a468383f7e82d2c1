"""What one sync run is asked to do: one typed object, built and checked once at the edge.

The CLI, the ``dintero-sync`` flow and the fan-out each build a :class:`SyncRequest` from what
the user typed; from there it goes unchanged to the tasks and the core. Every check runs when it
is built, before any request or database connection, with the user's own parameter names in
the message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .. import times
from ..auth.client_credentials import validation_message
from ..errors import ConfigurationError
from ..sink.destination import Destination
from ..streams.catalog import Stream, resolve_streams
from ..streams.paginators import DEFAULT_MAX_PAGES
from ..streams.personal_data import PersonalData, checked_mode
from ..times import CLOCK_SKEW, iso
from ..validation import validate_payout_destination

#: The earliest start_date accepted: no Dintero data is that old.
EARLIEST_START = datetime(2010, 1, 1, tzinfo=UTC)

#: The longest lookback or reconcile window accepted: ten years is already more than any
#: Dintero history; anything longer is a typo.
MAX_WINDOW = timedelta(days=3660)

_UNIT_SECONDS = {"days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}


def window(value: float | None, name: str, unit: str = "hours") -> timedelta | None:
    """A non-negative, finite window of ``value`` ``unit`` as a timedelta; None stays None.

    Args:
        value: the number the user gave.
        name: the user's name for it, for the message (``lookback_hours``).
        unit: ``"days"``, ``"hours"``, ``"minutes"`` or ``"seconds"``.

    Raises:
        ConfigurationError: not a finite number, negative, or longer than ten years.
    """
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds() / _UNIT_SECONDS[unit]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a number of {unit}, got {value!r}")
    if value < 0:
        raise ConfigurationError(
            f"{name} must not be negative (got {value}): a negative window would skip data"
        )
    seconds = value * _UNIT_SECONDS[unit]
    if seconds > MAX_WINDOW.total_seconds():
        raise ConfigurationError(
            f"{name}={value} is longer than {MAX_WINDOW.days} days; use full_refresh to read "
            "everything"
        )
    return timedelta(seconds=seconds)


def run_budget(timeout_minutes: float) -> timedelta:
    """A run's budget from ``timeout_minutes``: a positive, finite window."""
    budget = window(timeout_minutes, "timeout_minutes", "minutes")
    if not budget:
        raise ConfigurationError("timeout_minutes must be more than 0")
    return budget


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name} must be an integer, got {value!r}")
    if value < 1:
        raise ConfigurationError(f"{name} must be at least 1, got {value}")
    return value


@dataclass(frozen=True)
class Parameter:
    """One of the sync's parameters as users give it (hours, days, names)."""

    name: str
    default: Any
    help: str


#: The sync's parameters, once: ``dintero-sync``'s signature, the fan-out's, the CLI's options
#: and :meth:`SyncRequest.build` follow this list (``tests/test_parameters.py`` holds the flows'
#: signatures and docstrings to it). The run-level ones (blocks, ``timeout_minutes``) are not
#: here: they are not part of what is read.
SYNC_PARAMETERS: tuple[Parameter, ...] = (
    Parameter("streams", None, "a stream to sync; all when none is named"),
    Parameter(
        "destination", "dintero.db", "a SQLite file path or a SQLAlchemy URL without a password"
    ),
    Parameter("destination_block", None, "a SqlAlchemyConnector block name instead"),
    Parameter("lookback_hours", None, "re-read this far before each stream's cursor"),
    Parameter("page_size", 100, "rows per request (capped per endpoint)"),
    Parameter("full_refresh", False, "ignore and reset the saved cursors"),
    Parameter(
        "payout_destinations",
        None,
        "a payout destination whose transfers to sync; the account's list when none is named",
    ),
    Parameter("start_date", None, "the oldest data a first sync reads (ISO 8601, UTC if naive)"),
    Parameter("reconcile_days", None, "re-read at least the last N days, whatever the cursor"),
    Parameter("max_pages", DEFAULT_MAX_PAGES, "a hard cap of pages per window (a safety net)"),
    Parameter(
        "personal_data",
        "keep",
        "keep, hash or drop the personal fields (names, e-mails, addresses, bank accounts)",
    ),
    Parameter(
        "personal_data_key_block",
        None,
        "the Prefect Secret block holding the HMAC key personal_data=hash needs",
    ),
)

_PARAMETER_NAMES = tuple(p.name for p in SYNC_PARAMETERS)


class SyncRequest(BaseModel):
    """One sync run's request: which streams, where to, how far back.

    Built once where the user's input arrives (CLI, flow, fan-out) and passed unchanged to the
    tasks and the core; every check runs when it is built.

    Examples:
        ```python
        from datetime import timedelta
        from prefect_dintero.sync.options import SyncRequest

        request = SyncRequest.build(streams=["transactions"], lookback_hours=6)
        assert request.lookback == timedelta(hours=6)
        assert request.flow_parameters()["lookback_hours"] == 6
        ```
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # What SYNC_PARAMETERS describes, typed: the windows as timedeltas, lists as tuples.
    #: Stream names (validated); every stream when none is given.
    streams: tuple[str, ...] = Field(default=(), validate_default=True)
    destination: str = "dintero.db"
    destination_block: str | None = None
    #: Re-read this far before each cursor; None: each stream's default.
    lookback: timedelta | None = None
    #: Re-read at least this far back from the run's start, whatever the cursor.
    reconcile: timedelta | None = None
    page_size: int = 100
    full_refresh: bool = False
    start_date: datetime | None = None
    #: Empty: the account's list is read.
    payout_destinations: tuple[str, ...] = ()
    max_pages: int = DEFAULT_MAX_PAGES
    personal_data: PersonalData = "keep"
    personal_data_key_block: str | None = None

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigurationError(validation_message(exc)) from None

    @classmethod
    def build(cls, **parameters: Any) -> SyncRequest:
        """From :data:`SYNC_PARAMETERS` as flows and the CLI take them (hours, days), named as
        the user named them in any error; one left out takes its default.

        Raises:
            ConfigurationError: an unknown parameter or stream, a negative or absurd window, a
                password in the destination URL, a malformed payout destination id.
        """
        unknown = sorted(set(parameters) - set(_PARAMETER_NAMES))
        if unknown:
            raise ConfigurationError(
                f"unknown sync parameter(s) {', '.join(unknown)}; expected one of "
                + ", ".join(_PARAMETER_NAMES)
            )
        given = {p.name: parameters.get(p.name, p.default) for p in SYNC_PARAMETERS}
        if given["personal_data"] == "hash" and not given["personal_data_key_block"]:
            raise ConfigurationError(
                "personal_data='hash' needs personal_data_key_block: the name of a Prefect "
                "Secret block holding a random key of at least 32 bytes (hashes made with one "
                "key join across streams and runs; keep it, or the next run is refused)"
            )
        return cls(
            **{k: v for k, v in given.items() if k not in ("lookback_hours", "reconcile_days")},
            lookback=window(given["lookback_hours"], "lookback_hours"),
            reconcile=window(given["reconcile_days"], "reconcile_days", "days"),
        )

    def flow_parameters(self) -> dict[str, Any]:
        """This request as :data:`SYNC_PARAMETERS` (hours and days): ``dintero-sync``'s
        parameters, for a flow run or a deployment run started from it."""
        return {
            "streams": list(self.streams),
            "destination": self.destination,
            "destination_block": self.destination_block,
            "lookback_hours": _in(self.lookback, "hours"),
            "page_size": self.page_size,
            "full_refresh": self.full_refresh,
            "payout_destinations": list(self.payout_destinations) or None,
            "start_date": self.start_date,
            "reconcile_days": _in(self.reconcile, "days"),
            "max_pages": self.max_pages,
            "personal_data": self.personal_data,
            "personal_data_key_block": self.personal_data_key_block,
        }

    @property
    def target(self) -> Destination:
        """Where the data goes, as one object (checked when the request was built)."""
        return Destination(self.destination, self.destination_block)

    @property
    def specs(self) -> list[Stream]:
        """The streams' catalog entries, in the request's order."""
        return resolve_streams(list(self.streams))

    # -- checks, run once when the request is built ---------------------------------------------

    @field_validator("page_size", "max_pages", mode="before")
    @classmethod
    def _counts(cls, value: Any, info: Any) -> int:
        return _count(value, info.field_name)

    @field_validator("lookback", "reconcile", mode="before")
    @classmethod
    def _windows(cls, value: Any, info: Any) -> timedelta | None:
        return window(value, info.field_name, "seconds")

    @field_validator("payout_destinations", mode="before")
    @classmethod
    def _destinations(cls, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        return tuple(validate_payout_destination(d) for d in value)

    @field_validator("start_date")
    @classmethod
    def _start(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)  # Dintero's rule: no timezone means UTC
        if value > times.now() + CLOCK_SKEW:
            raise ConfigurationError(
                f"start_date {iso(value)} is in the future: nothing would be read"
            )
        if value < EARLIEST_START:
            # Older dates read nothing more, and the walks that step back from one (customers'
            # since_datetime) would fall off the calendar.
            raise ConfigurationError(
                f"start_date {value.date().isoformat()} is before {EARLIEST_START.year}, before "
                "any Dintero data can exist: leave it empty to read all history"
            )
        return value

    @field_validator("streams", mode="before")
    @classmethod
    def _streams(cls, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):  # one name, not its letters
            value = [value]
        # None or empty: every stream.
        return tuple(s.name for s in resolve_streams(list(value) if value else None))

    @field_validator("personal_data", mode="before")
    @classmethod
    def _policy(cls, value: Any) -> PersonalData:
        return checked_mode(value)

    @model_validator(mode="after")
    def _consistent(self) -> SyncRequest:
        self.target  # noqa: B018 - refuses a URL with a secret, never quoting it
        return self


def _in(value: timedelta | None, unit: str) -> float | None:
    if value is None:
        return None
    number = value.total_seconds() / _UNIT_SECONDS[unit]
    return int(number) if number.is_integer() else number
