"""Prefect blocks of prefect-dintero (installed as ``prefect_dintero.blocks``)."""

from .credentials import DinteroCredentials
from .service_token import DinteroServiceToken
from .session import DinteroOIDCSession

__all__ = ["DinteroCredentials", "DinteroOIDCSession", "DinteroServiceToken"]
