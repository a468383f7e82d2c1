"""A Dintero emulator bundled with prefect-dintero, so flows and tests run offline.

It serves the api.dintero.com and checkout.dintero.com surfaces on one loopback origin: the
client-credentials, refresh and OIDC token grants, a simulated identity provider, the list endpoints
of transactions, sessions, settlements, customers and payout transfers, and control routes under
``/_emulator/`` for counters, fault injection and a clock that can be advanced.
"""

from .config import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_REDIRECT_URI,
    EmulatorConfig,
    TestUser,
)
from .server import EmulatorClient, EmulatorServer, running_emulator, serve_forever

__all__ = [
    "DEFAULT_ACCOUNT_ID",
    "DEFAULT_CLIENT_ID",
    "DEFAULT_CLIENT_SECRET",
    "DEFAULT_REDIRECT_URI",
    "EmulatorClient",
    "EmulatorConfig",
    "EmulatorServer",
    "TestUser",
    "running_emulator",
    "serve_forever",
]
