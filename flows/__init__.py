"""Prefect flows of prefect-dintero (installed as ``prefect_dintero.flows``)."""

from .login import dintero_login
from .sync import dintero_sync

__all__ = ["dintero_login", "dintero_sync"]
