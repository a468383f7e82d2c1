"""Prefect flows of prefect-dintero (installed as ``prefect_dintero.flows``)."""

from .login import dintero_login

__all__ = ["dintero_login"]
