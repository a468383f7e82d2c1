"""Prefect flows of prefect-dintero (installed as ``prefect_dintero.flows``)."""
