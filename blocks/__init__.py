"""Prefect blocks of prefect-dintero (installed as ``prefect_dintero.blocks``)."""
