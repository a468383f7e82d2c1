"""Prefect tasks of prefect-dintero (installed as ``prefect_dintero.tasks``)."""
