"""Prefect tasks of prefect-dintero (installed as ``prefect_dintero.tasks``)."""

from prefect_dintero.tasks.authorization import exchange_authorization_code, get_bearer_token
from prefect_dintero.tasks.records import read_records
from prefect_dintero.tasks.syncing import sync_stream

__all__ = ["exchange_authorization_code", "get_bearer_token", "read_records", "sync_stream"]
