"""Prefect flows of prefect-dintero (installed as ``prefect_dintero.flows``)."""

from .accounts import AccountTarget, dintero_sync_accounts
from .login import dintero_login
from .summary import dintero_sync_summary
from .sync import dintero_sync

__all__ = [
    "AccountTarget",
    "dintero_login",
    "dintero_sync",
    "dintero_sync_accounts",
    "dintero_sync_summary",
]
