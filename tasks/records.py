"""A Prefect task that reads one Dintero stream's records for your own flow."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from prefect import get_run_logger, task
from prefect.blocks.system import Secret
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr

from prefect_dintero.blocks.prefect_api import load_block
from prefect_dintero.redact import install_log_filter
from prefect_dintero.streams.queries import RecordQuery
from prefect_dintero.tasks.authorization import get_bearer_token


@task(
    name="Read Dintero records",
    description="Read one Dintero stream's records (transactions, customers, ...) into the flow.",
    task_run_name="read-{stream}",
    # Records hold customers' names and e-mails: never written to result storage or a cache.
    persist_result=False,
    cache_policy=NO_CACHE,
)
def read_records(
    credentials_block: str,
    stream: str,
    created_from: datetime | None = None,
    created_to: datetime | None = None,
    session_block: str | None = None,
    payout_destinations: list[str] | None = None,
    max_records: int | None = None,
    personal_data: Literal["keep", "hash", "drop"] = "keep",
    personal_data_key_block: str | None = None,
) -> list[dict]:
    """The records of one stream, as Dintero sends them, for a flow of your own.

    For the common case: a report, a check, a join with your own data. To keep a copy in a
    database, run ``dintero-sync`` instead (incremental, resumable).

    Args:
        credentials_block: name of the ``DinteroCredentials`` block.
        stream: a stream of the catalog (``prefect_dintero.streams.catalog.CATALOG``).
        created_from: only records created at or after this (UTC if naive).
        created_to: only records created at or before this.
        session_block: a ``DinteroOIDCSession`` block name, to read as the logged-in user.
        payout_destinations: for ``payout_transfers``; None reads the account's list.
        max_records: stop after this many (None: all).
        personal_data: ``keep``, ``hash`` or ``drop`` the stream's personal fields, as
            ``dintero-sync`` does.
        personal_data_key_block: the Prefect ``Secret`` block with the key ``hash`` needs.

    Returns:
        The records, each a dict as Dintero sends it.

    Examples:
        The amount of the last 90 days' transactions, in minor units:
        ```python
        from datetime import UTC, datetime, timedelta
        from prefect import flow
        from prefect_dintero.tasks import read_records

        @flow
        def sales_lately() -> int:
            since = datetime.now(UTC) - timedelta(days=90)
            transactions = read_records("BLOCK_NAME", "transactions", created_from=since)
            return sum(t["amount"] for t in transactions)

        total = sales_lately()
        ```
    """
    install_log_filter()
    logger = get_run_logger()
    key = None
    if personal_data == "hash" and personal_data_key_block:
        key = SecretStr(str(load_block(Secret, personal_data_key_block).get()))
    query = RecordQuery(  # checked first
        stream,
        created_from=created_from,
        created_to=created_to,
        personal_data=personal_data,
        personal_data_key=key,
    )
    bearer = get_bearer_token.fn(credentials_block, session_block)
    records: list[dict] = []
    with bearer.client() as client:
        for record in client.iter_records(
            query.spec.name,
            created_from=query.created_from,
            created_to=query.created_to,
            payout_destinations=payout_destinations,
            personal_data=personal_data,
            personal_data_key=key,
        ):
            records.append(record)
            if max_records is not None and len(records) >= max_records:
                break
    logger.info("%s: %d records read from account %s", stream, len(records), bearer.account_id)
    return records
