"""prefect-dintero: a Prefect integration for the Dintero payments API.

The blocks are exported here (``from prefect_dintero import DinteroCredentials``) but loaded
lazily: the core library (client, tokens, emulator, cli) never imports Prefect. When Prefect
itself imports this package (its ``prefect.collections`` entry point, at server and worker
start-up) Prefect is already loaded, so the blocks are imported at once and their types register.
"""

import sys as _sys

from ._version import __version__

_BLOCKS = ("DinteroCredentials", "DinteroOIDCSession", "DinteroServiceToken")

__all__ = ["__version__", *_BLOCKS]


def __getattr__(name: str):
    if name in _BLOCKS:
        from . import blocks

        return getattr(blocks, name)
    raise AttributeError(f"module 'prefect_dintero' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_BLOCKS})


if "prefect" in _sys.modules:
    from .blocks import DinteroCredentials, DinteroOIDCSession, DinteroServiceToken  # noqa: F401
