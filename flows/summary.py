"""The ``dintero-sync-summary`` flow: a downstream deployment a finished sync can trigger."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from sqlalchemy import select

from prefect_dintero.redact import install_log_filter
from prefect_dintero.sink.destination import Destination
from prefect_dintero.streams.catalog import CATALOG
from prefect_dintero.tasks.destinations import open_sink


@flow(
    name="dintero-sync-summary",
    description=(
        "Summarise what a Dintero account holds at the destination: rows and cursor per stream. "
        "prefect.yaml runs it whenever a dintero.sync.completed event arrives, to show how a "
        "downstream deployment (a dbt run, a report) follows each sync."
    ),
)
def dintero_sync_summary(
    account_id: str,
    destination: str = "dintero.db",
    destination_block: str | None = None,
    sync_run_id: str = "",
    fetched: int = 0,
    inserted: int = 0,
    updated: int = 0,
) -> list[dict[str, Any]]:
    """A markdown artifact ``dintero-summary-<account>`` with one row per stream.

    ``prefect.yaml``'s ``after-sync`` deployment fills every parameter from the
    ``dintero.sync.completed`` event of the run that triggered it: the destination that run
    wrote to, its id and its counts.

    Args:
        account_id: the Dintero account, as the event names it.
        destination: the sync's destination (a SQLite path or a URL without a password).
        destination_block: a ``SqlAlchemyConnector`` block name instead (empty: none).
        sync_run_id: the flow run that triggered this one (shown in the summary).
        fetched, inserted, updated: that run's counts, over its streams.

    Returns:
        Per stream: its table's rows for the account and its cursor.
    """
    install_log_filter()
    sink = open_sink(Destination(destination, destination_block or None))
    try:
        sink.prepare(list(CATALOG.values()))
        rows = []
        with sink.engine.connect() as conn:
            states = {
                (r.stream, r.partition): r
                for r in conn.execute(
                    select(sink.state_table).where(sink.state_table.c.account_id == account_id)
                )
            }
        for spec in CATALOG.values():
            cursors = [
                s.cursor
                for (stream, _), s in states.items()
                if stream == spec.name and s.cursor is not None
            ]
            rows.append(
                {
                    "stream": spec.name,
                    "rows": sink.count(spec, account_id),
                    "cursor": max(cursors).isoformat() if cursors else None,
                }
            )
    finally:
        sink.dispose()
    table = "\n".join(f"| {r['stream']} | {r['rows']} | {r['cursor'] or ''} |" for r in rows)
    run = (
        f"The sync run {sync_run_id} fetched {fetched} rows: {inserted} new, {updated} "
        "updated (a row read twice, at a page boundary, is fetched twice and stored once).\n\n"
        if sync_run_id
        else ""
    )
    create_markdown_artifact(
        markdown=f"## Dintero account {account_id}\n\n{run}| Stream | Rows | Cursor |\n"
        "|---|---|---|\n" + table,
        key=f"dintero-summary-{account_id.lower()}",
        description=f"What the destination holds for Dintero account {account_id}.",
    )
    get_run_logger().info(
        "%s%s: %s",
        account_id,
        f" after run {sync_run_id} ({inserted} new, {updated} updated)" if sync_run_id else "",
        ", ".join(f"{r['stream']} {r['rows']}" for r in rows),
    )
    return rows
