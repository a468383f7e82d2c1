"""Prefect blocks of prefect-dintero (installed as ``prefect_dintero.blocks``)."""

from .credentials import DinteroCredentials
from .session import DinteroOIDCSession

__all__ = ["DinteroCredentials", "DinteroOIDCSession"]
