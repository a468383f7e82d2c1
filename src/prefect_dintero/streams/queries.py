"""Reading one stream's records in your own code: the catalog's paths and paginators, so you
never meet Dintero's hosts or its three page shapes."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr

from .. import times
from ..errors import ConfigurationError
from ..times import CLOCK_SKEW, iso, parse_datetime
from .catalog import Stream, resolve_streams
from .paginators import Paginator
from .personal_data import PersonalData, PersonalDataPolicy


def stream_for(stream: str | Stream) -> Stream:
    """The catalog entry of a stream name (ConfigurationError listing the valid ones)."""
    if isinstance(stream, Stream):
        return stream
    [spec] = resolve_streams([stream])
    return spec


def _utc(value: datetime | None, name: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise ConfigurationError(f"{name} must be a datetime, got {value!r}")
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class RecordQuery:
    """Which records of a stream to read: ``created_at`` within ``[created_from, created_to]``.

    Where the API filters on ``created_at`` (transactions, sessions, settlements) the bounds are
    sent; where it cannot (customers, payout transfers) every page is read and the records
    outside the bounds are dropped here. Records are checked (each has its key) page by page.
    """

    def __init__(
        self,
        stream: str | Stream,
        *,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        page_size: int = 100,
        personal_data: PersonalData = "keep",
        personal_data_key: SecretStr | None = None,
    ) -> None:
        self.spec = stream_for(stream)
        # Checked before any request: hash without a key is refused here.
        self.personal_data = PersonalDataPolicy(personal_data, personal_data_key)
        self.created_from = _utc(created_from, "created_from")
        self.created_to = _utc(created_to, "created_to")
        if self.spec.incremental == "snapshot" and (created_from or created_to):
            raise ConfigurationError(
                f"{self.spec.name} is read as it is now and its objects carry no creation "
                "time: read it without created_from and created_to"
            )
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise ConfigurationError(f"page_size must be a positive integer, got {page_size!r}")
        self.page_size = min(page_size, self.spec.max_page_size)
        self.api_filters = self.spec.filtered_by_api and self.spec.cursor_field == "created_at"
        #: Keys handed out, for streams paged by since_datetime: each page starts at the last
        #: one's newest value, inclusive, so boundary rows come twice (the sync's upsert
        #: absorbs them; a reader must not see them twice).
        self._seen: set[str] | None = set() if self.spec.incremental == "since" else None

    def paths(self, account_id: str, payout_destinations: list[str] | None) -> list[str]:
        """The paths the query reads: the stream's, or one per payout destination."""
        if not self.spec.per_destination:
            return [self.spec.url_path(account_id)]
        return [self.spec.url_path(account_id, d) for d in payout_destinations or ()]

    def paginator(self) -> Paginator:
        lower = self.created_from if self.api_filters else None
        # Customers are walked by updated_at up to now (plus the clock skew), as the sync does.
        return self.spec.paginator(self.page_size, lower, times.now() + CLOCK_SKEW)

    def params(self) -> dict[str, Any]:
        params = dict(self.spec.extra_params)
        if self.api_filters:
            if self.created_from is not None and self.spec.lower_param:
                params[self.spec.lower_param] = iso(self.created_from)
            if self.created_to is not None and self.spec.upper_param:
                params[self.spec.upper_param] = iso(self.created_to)
        return params

    def keep(self, rows: Iterable[dict]) -> list[dict]:
        """The rows within the bounds (all of them when there are none), each once, their
        personal fields hashed or dropped as the query says."""
        return self.personal_data.apply(self._within(rows), self.spec.personal)

    def _within(self, rows: Iterable[dict]) -> list[dict]:
        if self._seen is not None:
            fresh = []
            for row in rows:
                key = row[self.spec.primary_key]
                if key not in self._seen:
                    self._seen.add(key)
                    fresh.append(row)
            rows = fresh
        if self.created_from is None and self.created_to is None:
            return list(rows)
        low = self.created_from or datetime.min.replace(tzinfo=UTC)
        high = self.created_to or datetime.max.replace(tzinfo=UTC)
        return [
            row
            for row in rows
            if (created := parse_datetime(row.get("created_at"))) is not None
            and low <= created <= high
        ]
