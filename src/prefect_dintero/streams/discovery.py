"""What an account has, read from the API instead of asked of the user: its payout
destinations."""

from __future__ import annotations

from typing import Any, Protocol

from ..errors import MalformedResponseError, NotFoundError, PermissionDeniedError, StreamSkipped
from ..redact import get_logger
from ..validation import validate_payout_destination
from .paginators import refuse_more_pages

logger = get_logger(__name__)


class JsonReader(Protocol):
    """What discovery reads with (a :class:`~prefect_dintero.client.DinteroClient`): it never
    imports the client, which imports it."""

    def get_json(self, path: str, *, host: Any = ..., params: Any = ...) -> Any: ...


class AsyncJsonReader(Protocol):
    """:class:`JsonReader`, async (an ``AsyncDinteroClient``)."""

    async def get_json(self, path: str, *, host: Any = ..., params: Any = ...) -> Any: ...


def list_path(account_id: str) -> str:
    return f"/v1/accounts/{account_id}/payout-destinations"


def payout_destination_ids(
    client: JsonReader, account_id: str, stream: str = "payout_transfers"
) -> list[str]:
    """The account's payout destination ids, from ``GET /v1/accounts/{oid}/payout-destinations``
    (Account Management API, scope ``read:accounts``).

    The reference documents the objects (each with ``payout_destination_id``), not the
    envelope: a bare array and ``{"payout_destinations": [...]}`` are both read.

    Raises:
        StreamSkipped: the list cannot be read with these credentials (403, 404), or it is
            empty; the message says what to do.
    """
    path = list_path(account_id)
    try:
        return ids_from(client.get_json(path, host="api"), path, account_id, stream)
    except (PermissionDeniedError, NotFoundError) as exc:
        raise skipped(exc, path, stream) from None


async def apayout_destination_ids(client: AsyncJsonReader, account_id: str) -> list[str]:
    """:func:`payout_destination_ids` with an async client."""
    path = list_path(account_id)
    try:
        return ids_from(await client.get_json(path, host="api"), path, account_id)
    except (PermissionDeniedError, NotFoundError) as exc:
        raise skipped(exc, path) from None


def skipped(
    exc: PermissionDeniedError | NotFoundError, path: str, stream: str = "payout_transfers"
) -> StreamSkipped:
    """Why ``stream`` is skipped when the payout destinations list is refused."""
    if isinstance(exc, PermissionDeniedError):
        return StreamSkipped(
            f"{stream} skipped: the API client may not list the account's payout "
            "destinations (403; it needs the scope read:accounts). Add the scope to the API "
            "client in Backoffice, or pass payout_destinations=[...]"
        )
    return StreamSkipped(
        f"{stream} skipped: the account's payout destinations cannot be listed "
        f"(404 from {path}); pass payout_destinations=[...]"
    )


def ids_from(body: Any, path: str, account_id: str, stream: str = "payout_transfers") -> list[str]:
    """The ids in the list's body, whichever envelope it came in."""
    refuse_more_pages(body, path)
    items = body.get("payout_destinations", body.get("items")) if isinstance(body, dict) else body
    if items is None:
        items = []
    if not isinstance(items, list) or not all(
        isinstance(i, dict) and isinstance(i.get("payout_destination_id"), str) for i in items
    ):
        raise MalformedResponseError(
            f"{path}: expected objects with a payout_destination_id, got {type(items).__name__}"
        )
    ids = [
        validate_payout_destination(pd)
        for pd in dict.fromkeys(i["payout_destination_id"] for i in items)
    ]
    if not ids:
        raise StreamSkipped(f"{stream} skipped: the account has no payout destinations")
    logger.info("%s: payout destinations found: %s", account_id, ", ".join(ids))
    return ids
