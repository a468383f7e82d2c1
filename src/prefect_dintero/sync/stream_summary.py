"""What syncing one stream did: the counts a run logs, returns and shows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

#: The counts summed when partitions (and late-change reads) are combined.
COUNTS = (
    "pages",
    "fetched",
    "inserted",
    "updated",
    "unchanged",
    "outside_window",
    "requests",
    "retries",
    "rate_limited",
)


@dataclass
class StreamSummary:
    """What syncing one stream (of one account, and of one partition unless combined) did."""

    stream: str
    account_id: str
    partition: str = ""
    pages: int = 0
    fetched: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    outside_window: int = 0
    cursor_before: str | None = None
    cursor_after: str | None = None
    resumed: bool = False
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    seconds: float = 0.0
    #: The late-change reads made after this one (``captured_at``, ``refunded_at``), each with
    #: its own counts (not in this summary's).
    late_reads: list[StreamSummary] = field(default_factory=list)
    #: A combined summary's parts: one per payout destination of a per-destination stream.
    partitions: list[StreamSummary] = field(default_factory=list)
    #: Why the stream was skipped (payout destinations the credentials may not list), or "".
    skipped: str = ""

    @classmethod
    def combined(
        cls, stream: str, account_id: str, parts: list[StreamSummary], skipped: str = ""
    ) -> StreamSummary:
        """One summary of a stream's partitions and their late-change reads, which count with
        the rest; the partitions are kept when there is more than one (or a named one)."""
        every = [*parts, *(late for p in parts for late in p.late_reads)]
        total = cls(stream, account_id, skipped=skipped)
        for name in COUNTS:
            setattr(total, name, sum(getattr(p, name) for p in every))
        total.seconds = round(sum(p.seconds for p in every), 3)
        total.resumed = any(p.resumed for p in every)
        total.cursor_before = min((p.cursor_before for p in every if p.cursor_before), default=None)
        total.cursor_after = max((p.cursor_after for p in every if p.cursor_after), default=None)
        if len(parts) > 1 or (parts and parts[0].partition):
            total.partitions = list(parts)
        return total

    @property
    def status(self) -> str:
        return "skipped" if self.skipped else "ok"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


ProgressCallback = Callable[[StreamSummary], None]
