"""How the flows' parameters are stored: never a secret in Prefect's database or UI.

Prefect stores a run's parameters as the caller passed them, when the run is created: before
the flow's own checks can refuse anything. A password in a database URL, or a code pasted as a
plain string, would stay in the run's parameters for good, shown in the UI.
"""

from __future__ import annotations

import inspect
from typing import Any, ParamSpec, TypeVar, get_args, get_type_hints

from prefect import Flow
from pydantic import SecretStr

from prefect_dintero.redact import MASK
from prefect_dintero.sink.destination_urls import redact_url, url_secrets

P = ParamSpec("P")
R = TypeVar("R")


class MaskedFlow(Flow[P, R]):
    """A flow whose runs store every parameter its signature types ``SecretStr`` masked, and
    every database URL with a password (``user:password@``, ``?password=``) with it masked.

    ``SecretStr`` in the signature masks a ``SecretStr`` argument, but a plain ``str`` would be
    stored as it is: this masks by the signature, whatever the caller passes.
    """

    def serialize_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        serialized = super().serialize_parameters(parameters)
        for name in _secret_parameters(self.fn):
            if serialized.get(name) is not None:
                serialized[name] = MASK
        for name, value in serialized.items():
            if isinstance(value, str) and "://" in value and url_secrets(value):
                serialized[name] = redact_url(value)
        return serialized


def _secret_parameters(fn: Any) -> list[str]:
    hints = get_type_hints(fn)
    return [
        name
        for name in inspect.signature(fn).parameters
        if hints.get(name) is not None and SecretStr in (hints[name], *get_args(hints[name]))
    ]
