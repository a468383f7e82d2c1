"""Personal data under the user's control: kept as Dintero sends it, hashed, or dropped.

The catalog marks each stream's personal fields (``Stream.personal``: customers' names, e-mail
and phone; the customer's contact details, addresses, IP address and user agent of transactions
and sessions; the receiving bank account, BIC and message of payout transfers). A
:class:`PersonalDataPolicy` is applied to every object as its page arrives, before anything is
written, logged, or put in an error: the rest of the package only ever sees the result.

- ``keep``: what Dintero sends is stored as it is.
- ``hash``: each value becomes ``HMAC-SHA256(key, value)`` in hex. The same value hashes the
  same way in every stream and every run with the same key, so tables still join on a hashed
  e-mail (e-mails are trimmed and lower-cased first: ``Ada@Example.com `` and
  ``ada@example.com`` are one person). An object (an address) has each of its values hashed,
  its keys kept. Without the key nobody can test a guess (unlike a plain SHA-256 of an e-mail).
- ``drop``: the field is removed from the object; its typed column is NULL.

Anchor: Fivetran's column blocking and hashing; dlt and Airbyte leave this to a later transform,
by which time the values are already in the destination.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import SecretStr

from ..errors import ConfigurationError

PersonalData = Literal["keep", "hash", "drop"]
POLICIES: tuple[str, ...] = ("keep", "hash", "drop")

#: The shortest HMAC key accepted: RFC 2104 asks for at least the hash's output length.
MIN_KEY_BYTES = 32


def checked_mode(mode: object) -> PersonalData:
    """``mode`` when it is a policy this package knows.

    Raises:
        ConfigurationError: anything else, naming the three.
    """
    if mode not in POLICIES:
        raise ConfigurationError(
            f"personal_data must be one of {', '.join(POLICIES)}, got {mode!r}"
        )
    return mode  # type: ignore[return-value]


def _utf8(text: str) -> bytes:
    """A string's UTF-8 bytes, a lone surrogate included (JSON can carry ``\\udc80``, and
    ``keep`` stores it escaped): encoded as its own three bytes, so every value hashes, and
    two different values never hash alike. A valid string's bytes are plain UTF-8's."""
    return text.encode("utf-8", "surrogatepass")


def _is_email_field(name: str) -> bool:
    return "email" in name.lower()


@dataclass(frozen=True)
class PersonalDataPolicy:
    """What happens to the personal fields of every object synced or read.

    Args:
        mode: ``"keep"``, ``"hash"`` or ``"drop"``.
        key: the HMAC key, required for ``"hash"`` (at least 32 bytes); never shown.

    Examples:
        ```python
        from pydantic import SecretStr
        from prefect_dintero.streams.personal_data import PersonalDataPolicy

        policy = PersonalDataPolicy("hash", SecretStr("k" * 32))
        customer = {"id": "c1", "email": " Ada@Example.com", "first_name": "Ada"}
        hashed = policy.apply_one(customer, ("email", "first_name"))
        assert hashed["id"] == "c1" and len(hashed["email"]) == 64
        assert hashed["email"] == policy.hash_value("ada@example.com", "email")

        dropped = PersonalDataPolicy("drop").apply_one(customer, ("email", "first_name"))
        assert dropped == {"id": "c1"}
        ```
    """

    mode: PersonalData = "keep"
    key: SecretStr | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        checked_mode(self.mode)
        if self.mode == "hash":
            if self.key is None:
                raise ConfigurationError(
                    "personal_data='hash' needs a key: save one as a Prefect Secret block and "
                    "pass its name as personal_data_key_block"
                )
            if len(self.key.get_secret_value().encode()) < MIN_KEY_BYTES:
                raise ConfigurationError(
                    f"the personal data key is shorter than {MIN_KEY_BYTES} bytes: use a random "
                    "one, e.g. python -c 'import secrets; print(secrets.token_hex(32))'"
                )

    @property
    def fingerprint(self) -> str:
        """What a destination remembers: the mode, and for ``hash`` a digest of the key (so a
        run with another key is refused too), never the key."""
        if self.mode != "hash" or self.key is None:
            return self.mode
        check = hmac.new(self.key.get_secret_value().encode(), b"prefect-dintero", "sha256")
        return f"hash:{check.hexdigest()[:16]}"

    def hash_value(self, value: Any, name: str = "") -> str:
        """One value's HMAC-SHA256, hex; e-mails trimmed and lower-cased first."""
        assert self.key is not None
        text = value if isinstance(value, str) else repr(value)
        if _is_email_field(name):
            text = text.strip().lower()
        return hmac.new(
            self.key.get_secret_value().encode(), _utf8(text), hashlib.sha256
        ).hexdigest()

    def apply(self, objects: Iterable[dict], paths: tuple[str, ...]) -> list[dict]:
        """The objects with their personal fields (dotted ``paths``) hashed or dropped; the
        same list when the mode is ``keep`` or the stream has none."""
        if self.mode == "keep" or not paths:
            return objects if isinstance(objects, list) else list(objects)
        return [self.apply_one(obj, paths) for obj in objects]

    def apply_one(self, obj: dict, paths: tuple[str, ...]) -> dict:
        """One object, copied where it changes (the caller's object is left as it was)."""
        if self.mode == "keep":
            return obj
        out = dict(obj)
        for path in paths:
            self._apply_path(out, path.split("."))
        return out

    def _apply_path(self, obj: dict, steps: list[str]) -> None:
        name, rest = steps[0], steps[1:]
        if name not in obj:
            return
        if rest:
            inner = obj[name]
            if isinstance(inner, dict):
                obj[name] = dict(inner)
                self._apply_path(obj[name], rest)
            elif isinstance(inner, list):
                obj[name] = [dict(i) if isinstance(i, dict) else i for i in inner]
                for item in obj[name]:
                    if isinstance(item, dict):
                        self._apply_path(item, rest)
            return
        if self.mode == "drop":
            del obj[name]
        else:
            obj[name] = self._hash_tree(obj[name], name)

    def _hash_tree(self, value: Any, name: str) -> Any:
        if value is None:
            return None
        if isinstance(value, dict):
            return {k: self._hash_tree(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self._hash_tree(v, name) for v in value]
        return self.hash_value(value, name)


KEEP = PersonalDataPolicy()


def check_compatible(remembered: str | None, policy: PersonalDataPolicy, table: str) -> None:
    """Refuse a run whose policy differs from the one the destination's table was filled with:
    a table never mixes hashed and plain values (a full refresh starts it again).

    Raises:
        ConfigurationError: the destination was filled with another policy or key.
    """
    if remembered is None or remembered == policy.fingerprint:
        return
    raise ConfigurationError(
        f"{table} was filled with personal_data={_label(remembered)}, and this run asks for "
        f"{_label(policy.fingerprint)}: a table must not mix the two. Run with the same policy "
        "(and key), or with full_refresh=True to read everything again under the new one"
    )


def _label(fingerprint: str) -> str:
    if fingerprint.startswith("hash:"):
        return "'hash' (with a key whose check is " + fingerprint[5:] + ")"
    return repr(fingerprint)
