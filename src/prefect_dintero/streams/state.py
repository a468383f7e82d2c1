"""Where a stream stands, and what a page write did: the words the sync and the sink share."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any


@dataclass
class StreamState:
    """Where a stream of one account (and partition) stands."""

    cursor: datetime | None = None
    rows_total: int = 0
    window_lower: datetime | None = None
    window_upper: datetime | None = None
    resume: dict[str, Any] | None = None
    last_run_at: datetime | None = None
    last_run_id: str | None = None
    max_seen: datetime | None = None
    #: The personal-data policy the stream's rows were written with (``keep``, ``drop``, or
    #: ``hash:`` and a check of the key); None before this was recorded.
    personal_data: str | None = None
    #: A late-change read Dintero refused (its filter): not tried again before this.
    paused_until: datetime | None = None

    @property
    def in_progress(self) -> bool:
        return self.resume is not None


def with_state(state: StreamState, **changes: Any) -> StreamState:
    """A copy of ``state`` with ``changes``."""
    return replace(state, **changes)


@dataclass
class PageWrite:
    """What one page did to its table."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: int = 0
