"""Prefect flows of prefect-dintero (installed as ``prefect_dintero.flows``)."""

from prefect_dintero.flows.accounts import AccountTarget, dintero_sync_accounts
from prefect_dintero.flows.login import dintero_login
from prefect_dintero.flows.summary import dintero_sync_summary
from prefect_dintero.flows.sync import dintero_sync

__all__ = [
    "AccountTarget",
    "dintero_login",
    "dintero_sync",
    "dintero_sync_accounts",
    "dintero_sync_summary",
]
