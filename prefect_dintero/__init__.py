"""prefect-dintero: a Prefect integration for the Dintero payments API."""

from ._version import __version__

__all__ = ["__version__"]
