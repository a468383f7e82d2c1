"""Prefect blocks of prefect-dintero (installed as ``prefect_dintero.blocks``)."""

from prefect_dintero.blocks.credentials import DinteroCredentials
from prefect_dintero.blocks.service_token import DinteroServiceToken
from prefect_dintero.blocks.session import DinteroOIDCSession

__all__ = ["DinteroCredentials", "DinteroOIDCSession", "DinteroServiceToken"]
