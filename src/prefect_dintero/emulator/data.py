"""Deterministic, realistic Dintero objects for the emulator, and the mutations that age them.

Objects are plain dicts shaped like the API's list endpoints answer them
(https://docs.dintero.com/api-reference/transactions/list-all-transactions and its siblings). Each
collection keeps its objects sorted by the field the real endpoint orders and filters on, so a
page lookup is a bisect, not a scan: serving 100 000 transactions must never be the bottleneck of
a benchmark.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from .config import EmulatorConfig

BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

CURRENCIES = ("NOK", "NOK", "NOK", "SEK", "DKK", "EUR")
PRODUCTS = (
    ("dintero_psp", "dintero_psp.creditcard"),
    ("vipps", "vipps"),
    ("klarna", "klarna.klarna"),
    ("swish", "swish.swish"),
    ("collector", "collector.invoice"),
)
ITEMS = ("Luftboller", "Kanelsnurr", "Skolebrød", "Kaffe", "Brunost", "Lefse", "Vaffel", "Te")
FIRST_NAMES = ("Ada", "Ole", "Kari", "Nils", "Ingrid", "Lars", "Sigrid", "Erik", "Astrid", "Per")
LAST_NAMES = ("Lovelace", "Hansen", "Johansen", "Olsen", "Larsen", "Berg", "Haugen", "Dahl")
PROVIDERS = ("dintero_psp", "vipps", "klarna", "swish", "collector")
STREETS = ("Storgata", "Kirkegata", "Dronningens gate", "Bogstadveien", "Markveien", "Torggata")
PLACES = (("0150", "Oslo"), ("5003", "Bergen"), ("7011", "Trondheim"), ("4006", "Stavanger"))
BROWSERS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
)
BANKS = (("DNBANOKKXXX", "1503"), ("NDEANOKKXXX", "6011"), ("SPRONO22XXX", "3201"))
#: A ledger entry's keys that only a transfer or a payout to the bank fills (null otherwise).
TRANSFER_DETAILS = (
    "transfer_id",
    "transfer_reference",
    "transfer_source_payout_destination_id",
    "transfer_destination_payout_destination_id",
    "outbound_message",
    "outbound_receiver_bank_account_bic",
    "outbound_receiver_bank_account_number",
    "outbound_receiver_bank_account_type",
    "outbound_receiver_country",
)

#: Statuses a transaction can still move on from, where to, and for how many days after its
#: creation (None: up to the emulator's ``late_changes_days``). Authorizations happen within a
#: day, captures within 30 days, refunds for months.
TRANSITIONS: dict[str, tuple[tuple[str, str, float | None], ...]] = {
    "INITIATED": (("AUTHORIZED", "AUTHORIZE", 1), ("FAILED", "AUTHORIZE", 1)),
    # Dintero allows a capture as long as the authorisation holds (up to 30 days here).
    "AUTHORIZED": (("CAPTURED", "CAPTURE", 30), ("AUTHORIZATION_VOIDED", "VOID", 7)),
    "CAPTURED": (("PARTIALLY_REFUNDED", "REFUND", None), ("REFUNDED", "REFUND", None)),
    "PARTIALLY_REFUNDED": (("REFUNDED", "REFUND", None),),
}
#: What each provider keeps of a capture (permille) and how many days after a capture or
#: refund it settles it: emulator figures (Dintero publishes neither; fees are per agreement).
PROVIDER_TERMS = {
    "dintero_psp": (12, 1),
    "vipps": (15, 2),
    "klarna": (25, 3),
    "swish": (8, 1),
    "collector": (20, 3),
}
#: The providers settle once a day, at this hour (UTC).
SETTLEMENT_HOUR = 6
DAY_MS = 86_400_000
INITIAL_STATUSES = (
    ("CAPTURED", 50),
    ("AUTHORIZED", 20),
    ("REFUNDED", 5),
    ("PARTIALLY_REFUNDED", 5),
    ("AUTHORIZATION_VOIDED", 5),
    ("DECLINED", 5),
    ("FAILED", 5),
    ("INITIATED", 5),
)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def iso(ms: int) -> str:
    """Format epoch milliseconds the way Dintero does: ``2019-01-18T13:13:37.175Z``."""
    # isoformat is C code; strftime dominated generating 100 000 objects.
    return (EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")[:-6] + "Z"


def to_ms(dt: datetime) -> int:
    """Epoch milliseconds, in integer arithmetic: float timestamps drift by a millisecond."""
    return (dt - EPOCH) // timedelta(milliseconds=1)


class FastRandom(random.Random):
    """``random.Random`` with arithmetic ``randrange``/``randint``/``choice``.

    The stdlib versions reject bias with extra draws and cost several microseconds each, which
    dominated generating 100 000 transactions. Still fully determined by the seed.
    """

    def randrange(self, start, stop=None, step=1):  # type: ignore[override]
        if stop is None:
            start, stop = 0, start
        return start + step * int(self.random() * ((stop - start) // step))

    def randint(self, a, b):  # type: ignore[override]
        return a + int(self.random() * (b - a + 1))

    def choice(self, seq):  # type: ignore[override]
        return seq[int(self.random() * len(seq))]


class SortedCollection:
    """Objects kept sorted by ``(sort_ms, id)``, addressable by id, listable in any order.

    ``newest`` and ``oldest`` walk the sorted keys; ``shuffled`` is a stable permutation of the
    objects (by a salted hash of their id), so paging with "the id of the last object" stays
    consistent from one request to the next, as it must on any real server.
    """

    def __init__(self, salt: str = "") -> None:
        self._keys: list[tuple[int, str]] = []
        self._key_of: dict[str, tuple[int, str]] = {}
        self.by_id: dict[str, dict] = {}
        self._salt = salt.encode()
        self._version = 0
        self._shuffled: tuple[tuple, list[tuple[bytes, str]]] | None = None

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, obj: dict, sort_ms: int, obj_id: str | None = None) -> None:
        obj_id = obj_id or obj["id"]
        key = (sort_ms, obj_id)
        if self._keys and key > self._keys[-1]:
            self._keys.append(key)
        else:
            bisect.insort(self._keys, key)
        self._key_of[obj_id] = key
        self.by_id[obj_id] = obj
        self._version += 1

    def resort(self, obj_id: str, sort_ms: int) -> None:
        """Move an object whose sort field changed (customers sort on ``updated_at``)."""
        old = self._key_of[obj_id]
        del self._keys[bisect.bisect_left(self._keys, old)]
        new = (sort_ms, obj_id)
        bisect.insort(self._keys, new)
        self._key_of[obj_id] = new
        self._version += 1

    def remove(self, obj_id: str) -> None:
        key = self._key_of.pop(obj_id)
        del self._keys[bisect.bisect_left(self._keys, key)]
        del self.by_id[obj_id]
        self._version += 1

    def key_of(self, obj_id: str) -> tuple[int, str] | None:
        return self._key_of.get(obj_id)

    def _bounds(self, gte_ms: int | None, lte_ms: int | None) -> tuple[int, int]:
        lo = 0 if gte_ms is None else bisect.bisect_left(self._keys, (gte_ms, ""))
        hi = (
            len(self._keys)
            if lte_ms is None
            else bisect.bisect_right(self._keys, (lte_ms, "\uffff"))
        )
        return lo, hi

    def shuffle_key(self, obj_id: str) -> tuple[bytes, str]:
        return hashlib.blake2b(obj_id.encode(), key=self._salt, digest_size=8).digest(), obj_id

    def range(self, gte_ms: int | None = None, lte_ms: int | None = None) -> Iterator[dict]:
        """Objects within ``[gte, lte]``, oldest first."""
        lo, hi = self._bounds(gte_ms, lte_ms)
        return (self.by_id[k[1]] for k in self._keys[lo:hi])

    def page(
        self,
        *,
        order: str = "newest",
        limit: int,
        gte_ms: int | None = None,
        lte_ms: int | None = None,
        after_id: str | None = None,
    ) -> list[dict]:
        """One page in ``order``, within ``[gte, lte]``, strictly past the object ``after_id``.

        Raises:
            KeyError: ``after_id`` is not an object of this collection.
        """
        lo, hi = self._bounds(gte_ms, lte_ms)
        after = None
        if after_id is not None:
            after = self._key_of[after_id]
        if order == "shuffled":
            perm = self._permutation(lo, hi)
            start = 0 if after is None else bisect.bisect_right(perm, self.shuffle_key(after[1]))
            return [self.by_id[k[1]] for k in perm[start : start + limit]]
        if order == "newest":
            if after is not None:
                hi = min(hi, bisect.bisect_left(self._keys, after))
            start = max(lo, hi - limit)
            keys: Iterator[tuple[int, str]] = reversed(self._keys[start:hi])
        else:
            if after is not None:
                lo = max(lo, bisect.bisect_right(self._keys, after))
            keys = iter(self._keys[lo : min(hi, lo + limit)])
        return [self.by_id[k[1]] for k in keys]

    def _permutation(self, lo: int, hi: int) -> list[tuple[bytes, str]]:
        # Cached per window: a test pages the same window many times.
        marker = (self._version, lo, hi)
        if self._shuffled is None or self._shuffled[0] != marker:
            perm = sorted(self.shuffle_key(k[1]) for k in self._keys[lo:hi])
            self._shuffled = (marker, perm)
        return self._shuffled[1]

    def __iter__(self) -> Iterator[dict]:
        return (self.by_id[k[1]] for k in self._keys)


class AccountData:
    """The seeded objects of one merchant account, and the mutations that change them."""

    def __init__(self, account_id: str, config: EmulatorConfig, start: datetime) -> None:
        self.account_id = account_id
        self.config = config
        # A stable per-account seed: the same flags always give the same objects.
        self.rng = FastRandom(f"{config.seed}:{account_id}")
        salt = f"{config.seed}:{account_id}"
        self.transactions = SortedCollection(f"{salt}:transactions")
        self.sessions = SortedCollection(f"{salt}:sessions")
        self.settlements_by_settled = SortedCollection(f"{salt}:settlements")
        self.settlements_by_created = SortedCollection(f"{salt}:settlements")
        self.customers = SortedCollection(f"{salt}:customers")
        #: The customers with the deleted ones (``include_deleted=true``), each sorted by its
        #: last change: ``updated_at``, or ``deleted_at`` once deleted.
        self.customers_all = SortedCollection(f"{salt}:customers")
        self.transfers: dict[str, SortedCollection] = {
            pd: SortedCollection(f"{salt}:transfers:{pd}") for pd in config.payout_destinations
        }
        self._serial = 0
        #: Settlement ids and references come from a generator of their own: settling never
        #: shifts the rest of the seeded data set.
        self.settle_rng = FastRandom(f"{config.seed}:{account_id}:settle")
        #: Captures and refunds not settled yet: (due in epoch ms, transaction id, event index).
        self._unsettled: list[tuple[int, str, int]] = []
        self._settled_through_ms = to_ms(start - timedelta(days=config.history_days))
        #: What each payout destination holds of its settlements, by currency, between runs.
        self._held: dict[tuple[str, str], int] = {}
        self.last_change_ms = 0
        #: Every change made by ``mutate``: (stream, key, when in epoch ms), oldest first, so a
        #: simulation can tell how long each took to reach a destination.
        self.change_log: list[tuple[str, str, int]] = []
        end_ms = to_ms(start)
        begin_ms = to_ms(start - timedelta(days=config.history_days))
        for ms in self._spread(config.transactions, begin_ms, end_ms):
            self._new_transaction(ms, end_ms)
        for ms in self._spread(config.sessions, begin_ms, end_ms):
            self._new_session(ms)
        for ms in self._spread(config.settlements, begin_ms, end_ms - 3 * 86_400_000):
            self._new_settlement(ms, end_ms)
        for ms in self._spread(config.customers, begin_ms, end_ms):
            self._new_customer(ms, end_ms)
        for pd in config.payout_destinations:
            for ms in self._spread(config.transfers_per_destination, begin_ms, end_ms):
                self._new_transfer(pd, ms)
        self.settle(end_ms)

    # -- helpers ---------------------------------------------------------------------------------

    def _spread(self, n: int, begin_ms: int, end_ms: int) -> list[int]:
        if n <= 0 or end_ms <= begin_ms:
            return []
        return sorted(self.rng.randrange(begin_ms, end_ms) for _ in range(n))

    def _object_id(self) -> str:
        # Counter-based suffix keeps ids unique however many objects are generated.
        self._serial += 1
        head = "".join(self.rng.choices(BASE58, k=14))
        n, tail = self._serial, ""
        while len(tail) < 8:
            n, r = divmod(n, 58)
            tail = BASE58[r] + tail
        return f"{self.account_id}.{head}{tail}"

    def _uuid(self, rng: random.Random | None = None) -> str:
        h = f"{(rng or self.rng).getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"

    def _items(self) -> tuple[list[dict], int]:
        items, total = [], 0
        for line in range(1, self.rng.randint(1, 4) + 1):
            quantity = self.rng.randint(1, 5)
            amount = quantity * self.rng.randrange(1_500, 49_900, 100)
            vat_amount = amount * 25 // 125
            items.append(
                {
                    "id": f"item-{self.rng.randrange(1, 999)}",
                    "line_id": str(line),
                    "description": self.rng.choice(ITEMS),
                    "quantity": quantity,
                    "amount": amount,
                    "vat_amount": vat_amount,
                    "vat": 25,
                }
            )
            total += amount
        return items, total

    def _event(self, event: str, status: str, amount: int, ms: int) -> dict:
        return {
            "id": self._uuid(),
            "event": event,
            "transaction_status": status,
            "success": status not in ("FAILED", "DECLINED"),
            "amount": amount,
            "created_at": iso(ms),
            "request_id": f"{self.rng.getrandbits(128):032x}",
        }

    # -- personal details: drawn from a generator seeded with the object's id, so an object's
    # -- person stays the same whatever else is generated or mutated --------------------------

    @staticmethod
    def _person(obj_id: str) -> tuple[random.Random, str, str, str, str]:
        rng = random.Random(obj_id)
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        email = f"{first.lower()}.{last.lower()}{rng.randrange(1, 999)}@example.com"
        phone = f"+47{rng.randrange(40_000_000, 99_999_999)}"
        return rng, first, last, email, phone

    def _address(self, rng: random.Random, first: str, last: str, email: str, phone: str) -> dict:
        """An ``OrderAddress`` as the checkout and payments schemas describe it: its optional
        string keys that a private buyer has no value for (c/o, business name, organisation
        number) are left out, as the schemas allow (typed string, never null); sent as null
        only under ``--null-optional-keys``."""
        postal_code, place = rng.choice(PLACES)
        absent = (
            {}
            if self.config.omit_optional_keys
            else {"co_address": None, "business_name": None, "organization_number": None}
        )
        return {
            "first_name": first,
            "last_name": last,
            "email": email,
            "phone_number": phone,
            "address_line": f"{rng.choice(STREETS)} {rng.randrange(1, 120)}",
            "address_line_2": f"H{rng.randrange(101, 505)}",
            **absent,
            "postal_code": postal_code,
            "postal_place": place,
            "country": "NO",
            "latitude": round(rng.uniform(58.0, 63.5), 6),
            "longitude": round(rng.uniform(5.0, 11.0), 6),
        }

    def _buyer(self, obj_id: str) -> dict:
        """The personal part of a transaction or session: customer, addresses, IP, agent."""
        rng, first, last, email, phone = self._person(obj_id)
        address = self._address(rng, first, last, email, phone)
        return {
            "customer": {
                "customer_id": f"cust-{rng.randrange(1, 5000)}",
                "email": email,
                "phone_number": phone,
            },
            "billing_address": address,
            "shipping_address": dict(address),
            "customer_ip": f"84.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
            "user_agent": rng.choice(BROWSERS),
        }

    # -- generators ------------------------------------------------------------------------------

    def _new_transaction(self, created_ms: int, now_ms: int) -> dict:
        rng = self.rng
        product, product_type = rng.choice(PRODUCTS)
        items, amount = self._items()
        weights = [w for _, w in INITIAL_STATUSES]
        status = rng.choices([s for s, _ in INITIAL_STATUSES], weights)[0]
        events = [self._event("INITIALIZE", "INITIATED", amount, created_ms)]
        t = created_ms
        authorized = [("AUTHORIZE", "AUTHORIZED")]
        captured = [*authorized, ("CAPTURE", "CAPTURED")]
        path = {
            "INITIATED": [],
            "AUTHORIZED": authorized,
            "DECLINED": [("AUTHORIZE", "DECLINED")],
            "FAILED": [("AUTHORIZE", "FAILED")],
            "CAPTURED": captured,
            "AUTHORIZATION_VOIDED": [*authorized, ("VOID", "AUTHORIZATION_VOIDED")],
            "PARTIALLY_REFUNDED": [*captured, ("REFUND", "PARTIALLY_REFUNDED")],
            "REFUNDED": [*captured, ("REFUND", "REFUNDED")],
        }[status]
        for event, st in path:
            t = min(now_ms, t + rng.randrange(1_000, 6 * 3_600_000))
            # A partial refund gives back part of the amount: 20 to 80 %, from the payment's
            # time (not the generator, whose sequence the rest of the data set follows).
            part = amount * (2 + created_ms % 7) // 10 if st == "PARTIALLY_REFUNDED" else amount
            events.append(self._event(event, st, part, t))
        txn_id = self._object_id()
        destinations = self.config.payout_destinations or ["PD-main"]
        txn = {
            "id": txn_id,
            "session_id": self._object_id(),
            "created_at": iso(created_ms),
            "updated_at": iso(t),
            "payment_product": product,
            "payment_product_type": product_type,
            "amount": amount,
            "currency": rng.choice(CURRENCIES),
            "status": status,
            "merchant_reference": f"ORDER-{rng.randrange(10_000, 999_999)}",
            # Settled by the providers' daily runs (``settle``).
            "settlement_status": "NOT_SETTLED",
            "payout_destination_id": destinations[zlib.crc32(txn_id.encode()) % len(destinations)],
            "channel": rng.choice(("ecommerce", "ecommerce", "in_app", "in_store")),
            "store": {"id": f"store-{rng.randrange(1, 4)}", "name": "Bakeriet"},
            "items": items,
            "events": events,
            "metadata": {"session:profile_id": f"{self.account_id}.profile-default"},
        }
        txn.update(self._buyer(txn_id))
        card = random.Random(txn_id + ":card")
        txn["card"] = {
            "brand": card.choice(("VISA", "MASTERCARD")),
            "masked_pan": f"{card.choice(('4', '5'))}{card.randrange(10**4, 10**5)}******"
            f"{card.randrange(1000, 9999)}",
            "expiry_date": f"{card.randrange(1, 12):02d}/{card.randrange(27, 31)}",
            "type": "debit",
            "country": "NO",
        }
        self.transactions.add(txn, created_ms)
        for index in range(len(events)):
            self._to_settle(txn, index)
        return txn

    def _to_settle(self, txn: dict, index: int) -> None:
        """Queue a successful capture or refund for its provider's settlement."""
        event = txn["events"][index]
        if event["event"] in ("CAPTURE", "REFUND") and event["success"]:
            lag_days = PROVIDER_TERMS[txn["payment_product"]][1]
            due = to_ms(datetime.fromisoformat(event["created_at"])) + lag_days * DAY_MS
            self._unsettled.append((due, txn["id"], index))

    def _new_session(self, created_ms: int) -> dict:
        rng = self.rng
        items, amount = self._items()
        visited = created_ms + rng.randrange(1_000, 600_000)
        completed = rng.random() < 0.7
        events = [
            {"name": "INITIATED", "created_at": iso(created_ms)},
            {"name": "VISITED", "created_at": iso(visited)},
        ]
        if completed:
            events.append({"name": "COMPLETED", "created_at": iso(visited + 30_000)})
        session_id = self._object_id()
        buyer = self._buyer(session_id)
        session = {
            "id": session_id,
            "created_at": iso(created_ms),
            "updated_at": iso(visited + (30_000 if completed else 0)),
            "expires_at": iso(created_ms + 24 * 3_600_000),
            "customer_ip": buyer["customer_ip"],
            "user_agent": buyer["user_agent"],
            "customer": buyer["customer"],
            "order": {
                "amount": amount,
                "currency": rng.choice(CURRENCIES),
                "merchant_reference": f"ORDER-{rng.randrange(10_000, 999_999)}",
                "vat_amount": amount * 25 // 125,
                "items": items,
                "billing_address": buyer["billing_address"],
                "shipping_address": buyer["shipping_address"],
            },
            "url": {
                "return_url": "https://shop.example.com/return",
                "callback_url": "https://shop.example.com/callback",
            },
            # Required by checkout_session_get: the payment configuration the session offers.
            "configuration": {
                "default_payment_type": "vipps",
                "channel": "ecommerce",
                "auto_capture": False,
                "dintero_psp": {"creditcard": {"enabled": True}},
                "vipps": {"enabled": True},
                "klarna": {"klarna": {"enabled": True}},
            },
            "events": events,
            "metadata": {"session:profile_id": f"{self.account_id}.profile-default"},
        }
        # A string when present, not nullable: absent until a transaction exists (null only
        # behind the null-optional-keys switch, as real servers sometimes send it).
        transaction_id = self._object_id() if completed else None
        if transaction_id is not None or not self.config.omit_optional_keys:
            session["transaction_id"] = transaction_id
        self.sessions.add(session, created_ms)
        return session

    def _new_settlement(self, created_ms: int, now_ms: int) -> dict:
        rng = self.rng
        settled_ms = min(now_ms, created_ms + rng.randrange(3_600_000, 3 * 86_400_000))
        capture = rng.randrange(100_000, 10_000_000)
        refund = rng.randrange(0, capture // 10)
        fee = capture // 50
        provider = rng.choice(PROVIDERS)
        settlement = {
            "id": self._uuid(),
            "start_at": iso(created_ms - 86_400_000),
            "end_at": iso(created_ms),
            "created_at": iso(created_ms),
            "updated_at": iso(settled_ms),
            "settled_at": iso(settled_ms),
            "provider": provider,
            "provider_reference": f"{provider.upper()}-{rng.randrange(10**7, 10**8)}",
            "amounts": [
                {
                    "amount": capture - refund - fee,
                    "capture": capture,
                    "refund": refund,
                    "fee": fee,
                    "currency": "NOK",
                }
            ],
            "payment_status": rng.choice(("paid", "paid", "paid", "postponed")),
            "payout_destination_id": rng.choice(self.config.payout_destinations or ["PD-main"]),
            "attachments": [],
        }
        self.settlements_by_settled.add(settlement, settled_ms)
        self.settlements_by_created.add(settlement, created_ms)
        return settlement

    def _new_customer(self, created_ms: int, now_ms: int) -> dict:
        rng = self.rng
        updated_ms = min(now_ms, created_ms + rng.randrange(0, 30 * 86_400_000))
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        cid = self._uuid()
        customer = {
            "id": cid,
            "customer_id": f"cust-{cid[:8]}",
            "created_at": iso(created_ms),
            "created_by": "emulator",
            "updated_at": iso(updated_ms),
            "type": "customer",
            "first_name": first,
            "last_name": last,
            "email": f"{first.lower()}.{last.lower()}{rng.randrange(1, 999)}@example.com",
            "phone_number": f"+47{rng.randrange(40_000_000, 99_999_999)}",
            "status": "active",
            "attributes": {"tier": rng.choice(("bronze", "silver", "gold"))},
            "addresses": [],
        }
        self.customers.add(customer, updated_ms, cid)
        self.customers_all.add(customer, updated_ms, cid)
        return customer

    def _new_transfer(self, destination: str, created_ms: int) -> dict:
        """A ledger entry of a kind drawn at random (money in from a provider, a transfer to
        another destination, a payout to the bank), for data sets that need many."""
        rng = self.rng
        kind = rng.choice(("inbound", "inbound", "transfer", "outbound"))
        entry_id = self._uuid()
        amount = rng.randrange(1_000, 5_000_000)
        provider = rng.choice(PROVIDERS) if kind == "inbound" else None
        return self._transfer(destination, created_ms, kind, entry_id, amount, "NOK", provider)

    def _transfer(
        self,
        destination: str,
        created_ms: int,
        kind: str,
        entry_id: str,
        amount: int,
        currency: str,
        provider: str | None = None,
        match: dict | None = None,
    ) -> dict:
        """A ledger entry of a payout destination (``PayoutDestinationTransferEntryV2``), with
        the settlement it pays out (``payment_match_report_data``) when ``match`` is given."""
        entry = {
            "ledger_entry_id": entry_id,
            "account_id": self.account_id,
            "payout_destination_config_id": f"{destination}-config",
            "payout_destination_id": destination,
            "created_at": iso(created_ms),
            "currency": currency,
            "amount": amount,
            "type": kind,
            "inbound_payment_provider": provider,
        }
        # Required (nullable) on every entry by the payout schema; filled where they apply:
        # a transfer between destinations, or a payout to the receiver's bank account.
        entry.update(dict.fromkeys(TRANSFER_DETAILS))
        if kind != "inbound":
            details = random.Random(entry_id)
            entry["transfer_id"] = f"{details.getrandbits(128):032x}"
            entry["transfer_reference"] = f"PAYOUT-{details.randrange(10**6, 10**7)}"
        if kind == "transfer":
            entry["transfer_source_payout_destination_id"] = destination
            entry["transfer_destination_payout_destination_id"] = "PD-reserve"
        if kind == "outbound":
            bic, bank = details.choice(BANKS)
            _, first, last, _, _ = self._person(entry_id)
            entry.update(
                outbound_message=f"Utbetaling {first} {last}",
                outbound_receiver_bank_account_bic=bic,
                outbound_receiver_bank_account_number=f"{bank}{details.randrange(10**6, 10**7)}",
                outbound_receiver_bank_account_type="bban",
                outbound_receiver_country="NO",
            )
        if match is not None:
            entry["payment_match_report_data"] = match
        self.transfers[destination].add(entry, created_ms, entry_id)
        return entry

    # -- settlements of the payments -------------------------------------------------------------

    def settle(self, until_ms: int) -> dict[str, list[str]]:
        """The providers' daily settlement runs up to ``until_ms``, as Dintero's schemas
        describe what they leave behind:

        - each run pays out every capture and refund its provider's lag has passed, one
          settlement per provider, payout destination and currency (``amounts``: capture,
          refund, fee, and ``amount = capture - refund - fee``);
        - each event settled carries its entry (``settlements.events[]``: the settlement's id
          and provider reference, the event's id as ``event_correlation_id``, and what of it
          was capture, refund and fee), and its payment's ``settlement_status`` follows;
        - the money reaches the payout destination as an ``inbound`` ledger entry with the
          settlement's ``payment_match_report_data``, and leaves for the bank the same day
          (one ``outbound`` entry per destination and currency).

        Returns the keys changed, by stream.
        """
        changed: dict[str, list[str]] = {}
        first_run = self._settled_through_ms // DAY_MS * DAY_MS + SETTLEMENT_HOUR * 3_600_000
        if first_run <= self._settled_through_ms:
            first_run += DAY_MS
        # Each run's entries are dated a millisecond or two after it: never after until_ms.
        runs = range(first_run, until_ms - 2, DAY_MS)
        self._unsettled.sort()
        taken = 0
        for run_ms in runs:
            groups: dict[tuple[str, str, str], list[tuple[dict, int]]] = {}
            while taken < len(self._unsettled) and self._unsettled[taken][0] <= run_ms:
                _, txn_id, index = self._unsettled[taken]
                taken += 1
                txn = self.transactions.by_id[txn_id]
                key = (txn["payment_product"], txn["payout_destination_id"], txn["currency"])
                groups.setdefault(key, []).append((txn, index))
            paid: dict[tuple[str, str], int] = {}
            for key, events in groups.items():
                settlement = self._payment_settlement(run_ms, *key, events)
                changed.setdefault("settlements", []).append(settlement["id"])
                changed.setdefault("transactions", []).extend(t["id"] for t, _ in events)
                _, destination, currency = key
                paid[(destination, currency)] = (
                    paid.get((destination, currency), 0) + settlement["amounts"][0]["amount"]
                )
            for (destination, currency), amount in paid.items():
                # What the destination holds is paid to the bank; a refund-heavy day's
                # negative balance is carried to the next.
                held = self._held.get((destination, currency), 0) + amount
                if destination in self.transfers and held > 0:
                    entry_id = self._uuid(self.settle_rng)
                    entry = self._transfer(
                        destination, run_ms + 2, "outbound", entry_id, held, currency
                    )
                    changed.setdefault("payout_transfers", []).append(entry["ledger_entry_id"])
                    held = 0
                self._held[(destination, currency)] = held
            if runs:
                self._settled_through_ms = run_ms
        del self._unsettled[:taken]
        for stream, keys in changed.items():
            changed[stream] = list(dict.fromkeys(keys))
        return changed

    def _payment_settlement(
        self,
        run_ms: int,
        provider: str,
        destination: str,
        currency: str,
        events: list[tuple[dict, int]],
    ) -> dict:
        """One settlement of these payment events (see :meth:`settle`)."""
        settlement_id = self._uuid(self.settle_rng)
        reference = f"{provider.upper()}-{self.settle_rng.randrange(10**7, 10**8)}"
        fee_permille = PROVIDER_TERMS[provider][0]
        totals = {"capture": 0, "refund": 0, "fee": 0}
        times = []
        for txn, index in events:
            event = txn["events"][index]
            times.append(event["created_at"])
            capture = event["amount"] if event["event"] == "CAPTURE" else 0
            refund = event["amount"] if event["event"] == "REFUND" else 0
            fee = capture * fee_permille // 1000
            event["settlements"] = {
                "events": [
                    {
                        "settlement_id": settlement_id,
                        "provider_reference": reference,
                        "event_correlation_id": event["id"],
                        "amount": capture - refund - fee,
                        "capture": capture,
                        "refund": refund,
                        "fee": fee,
                    }
                ],
                "settlement_status": "SETTLED",
            }
            totals["capture"] += capture
            totals["refund"] += refund
            totals["fee"] += fee
            money = [
                e for e in txn["events"] if e["event"] in ("CAPTURE", "REFUND") and e["success"]
            ]
            settled = sum(1 for e in money if "settlements" in e)
            txn["settlement_status"] = "SETTLED" if settled == len(money) else "PARTIALLY_SETTLED"
            if self.config.settlement_touches_updated_at:  # undocumented: both are offered
                txn["updated_at"] = max(txn["updated_at"], iso(run_ms))
        net = totals["capture"] - totals["refund"] - totals["fee"]
        amounts = {"amount": net, **totals, "currency": currency}
        settlement = {
            "id": settlement_id,
            "start_at": min(times),
            "end_at": max(times),
            "created_at": iso(run_ms),
            "updated_at": iso(run_ms),
            "settled_at": iso(run_ms),
            "provider": provider,
            "provider_reference": reference,
            "amounts": [amounts],
            "payment_status": "paid",
            "payout_destination_id": destination,
            "attachments": [],
        }
        self.settlements_by_settled.add(settlement, run_ms)
        self.settlements_by_created.add(settlement, run_ms)
        if destination in self.transfers:
            match = {
                key: settlement[key]
                for key in ("start_at", "end_at", "settled_at", "created_at", "provider")
            }
            match.update(
                provider_reference=reference,
                amounts=[dict(amounts)],
                payment_status="payment-match",
                payout_destination_id=destination,
            )
            self._transfer(
                destination,
                run_ms + 1,
                "inbound",
                self._uuid(self.settle_rng),
                net,
                currency,
                provider,
                match,
            )
        return settlement

    def balances(self, destination: str) -> list[dict]:
        """A payout destination's balance per currency, from its ledger: what came in, less
        what went to the bank or another destination."""
        totals: dict[str, int] = {}
        for entry in self.transfers[destination]:
            sign = 1 if entry["type"] == "inbound" else -1
            if entry["type"] == "transfer" and entry["transfer_source_payout_destination_id"] != (
                destination
            ):
                sign = 1
            totals[entry["currency"]] = totals.get(entry["currency"], 0) + sign * entry["amount"]
        return [
            {
                "account_id": self.account_id,
                "payout_destination_config_id": f"{destination}-config",
                "payout_destination_id": destination,
                "currency": currency,
                "amount": amount,
            }
            for currency, amount in sorted(totals.items())
        ]

    # -- mutations ---------------------------------------------------------------------------------

    def _late_changes(self, txn: dict, age_days: float, late_days: float) -> list[tuple]:
        """The changes still possible for a transaction of this age: (status, event) pairs.
        Settlements are the providers' daily runs (:meth:`settle`)."""
        return [
            (status, event)
            for status, event, within in TRANSITIONS.get(txn["status"], ())
            if age_days <= (late_days if within is None else min(within, late_days))
        ]

    def mutate(
        self, now: datetime, counts: dict[str, int], recent_days: float | None = None
    ) -> dict:
        """Create and change objects at ``now``; return what changed, by stream.

        ``counts`` keys: ``new_transactions``, ``update_transactions``, ``capture_late`` and
        ``refund_any_age`` (with ``older_than_days``), ``new_sessions``,
        ``new_settlements``, ``new_customers``, ``update_customers``, ``delete_customers``,
        ``new_transfers``, and ``settle`` (the providers' settlement runs due by ``now``).
        Updated transactions change the way real ones do, days to months after creation:
        authorized within a day, captured within 30 days, settled within two weeks, refunded up
        to ``late_changes_days`` (or ``recent_days``, when given, for every kind of change).
        A read by ``created_at`` misses the late ones: the ``captured_at`` and ``refunded_at``
        filters, or the reconcile, catch them.
        """
        now_ms = to_ms(now)
        changed: dict[str, list[str]] = {}
        for _ in range(counts.get("new_transactions", 0)):
            now_ms += 1  # distinct created_at per new object keeps ordering deterministic
            txn = self._new_transaction(now_ms, now_ms)
            changed.setdefault("transactions", []).append(txn["id"])
        n_update = counts.get("update_transactions", 0)
        if n_update:
            late_days = float(self.config.late_changes_days if recent_days is None else recent_days)
            since = now_ms - int(late_days * 86_400_000)
            candidates = []
            for t in self.transactions.range(gte_ms=since):
                age = (now_ms - to_ms(datetime.fromisoformat(t["created_at"]))) / 86_400_000
                options = self._late_changes(t, age, late_days)
                if options:
                    candidates.append((t, options))
            for txn, options in self.rng.sample(candidates, min(n_update, len(candidates))):
                status, event = self.rng.choice(options)
                now_ms += 1
                if event == "REFUND":  # part of what is left, or the rest
                    events = txn["events"]
                    left = sum(e["amount"] for e in events if e["event"] == "CAPTURE") - sum(
                        e["amount"] for e in events if e["event"] == "REFUND"
                    )
                    self.refund(txn, now_ms, left if status == "REFUNDED" else max(1, left // 2))
                    changed.setdefault("transactions", []).append(txn["id"])
                    continue
                txn["updated_at"] = iso(now_ms)
                txn["status"] = status
                txn["events"].append(self._event(event, status, txn["amount"], now_ms))
                self._to_settle(txn, len(txn["events"]) - 1)
                changed.setdefault("transactions", []).append(txn["id"])
        n_capture = counts.get("capture_late", 0)
        if n_capture:
            # Captures of payments authorised up to 30 days ago (older than
            # ``older_than_days``): all of the amount, or part of it.
            older = float(counts.get("older_than_days", 0))
            capturable = self._payments(("AUTHORIZED",), now_ms, older, 30)
            for payment in self.rng.sample(capturable, min(n_capture, len(capturable))):
                now_ms += 1
                part = payment["amount"] if self.rng.random() < 0.6 else payment["amount"] // 2
                status = "CAPTURED" if part == payment["amount"] else "PARTIALLY_CAPTURED"
                payment["events"].append(self._event("CAPTURE", status, part, now_ms))
                self._to_settle(payment, len(payment["events"]) - 1)
                payment["status"] = status
                payment["updated_at"] = iso(now_ms)
                changed.setdefault("transactions", []).append(payment["id"])
        n_refund = counts.get("refund_any_age", 0)
        if n_refund:
            # Refunds of payments of any age (Dintero allows them long after the payment),
            # older than ``older_than_days``: part of what is left, or all of it.
            older = float(counts.get("older_than_days", 0))
            refundable = self._payments(("CAPTURED", "PARTIALLY_REFUNDED"), now_ms, older)
            for payment in self.rng.sample(refundable, min(n_refund, len(refundable))):
                now_ms += 1
                self.refund(payment, now_ms)
                changed.setdefault("transactions", []).append(payment["id"])
        for _ in range(counts.get("new_sessions", 0)):
            now_ms += 1
            changed.setdefault("sessions", []).append(self._new_session(now_ms)["id"])
        for _ in range(counts.get("new_settlements", 0)):
            now_ms += 1
            changed.setdefault("settlements", []).append(self._new_settlement(now_ms, now_ms)["id"])
        for _ in range(counts.get("new_customers", 0)):
            now_ms += 1
            changed.setdefault("customers", []).append(self._new_customer(now_ms, now_ms)["id"])
        n_cust = counts.get("update_customers", 0)
        if n_cust and len(self.customers):
            # Customers that existed before this call: one made just now is new, not updated.
            before = sorted(set(self.customers.by_id) - set(changed.get("customers", ())))
            ids = self.rng.sample(before, min(n_cust, len(before)))
            # A bulk update (an import, a migration) gives many customers one updated_at.
            same_time = bool(counts.get("same_updated_at"))
            if same_time:
                now_ms += 1
            for cid in ids:
                if not same_time:
                    now_ms += 1
                self._touch_customer(cid, now_ms)
                changed.setdefault("customers", []).append(cid)
        n_deleted = counts.get("delete_customers", 0)
        if n_deleted and len(self.customers):
            alive = sorted(set(self.customers.by_id) - set(changed.get("customers", ())))
            for cid in self.rng.sample(alive, min(n_deleted, len(alive))):
                now_ms += 1
                self.delete_customer(cid, now_ms)
                changed.setdefault("customers", []).append(cid)
        for _ in range(counts.get("new_transfers", 0)):
            for pd in self.config.payout_destinations:
                now_ms += 1
                entry = self._new_transfer(pd, now_ms)
                changed.setdefault("payout_transfers", []).append(entry["ledger_entry_id"])
        if counts.get("settle"):
            # The providers' daily runs due since the last: payments, their settlements and
            # the payout destinations' ledger entries change together.
            for stream, keys in self.settle(now_ms).items():
                changed.setdefault(stream, []).extend(keys)
        #: The latest time given to a change: one millisecond apart, they may run ahead of now.
        self.last_change_ms = now_ms
        for stream, keys in changed.items():
            self.change_log.extend((stream, key, self._changed_at(stream, key)) for key in keys)
        return {k: len(v) for k, v in changed.items()}

    def _payments(
        self, statuses: tuple[str, ...], now_ms: int, older: float, newer: float = math.inf
    ) -> list[dict]:
        """The transactions in these statuses created between ``older`` and ``newer`` days
        before ``now_ms``."""
        return [
            t
            for t in self.transactions
            if t["status"] in statuses
            and older
            <= (now_ms - to_ms(datetime.fromisoformat(t["created_at"]))) / 86_400_000
            <= newer
        ]

    def refund(self, txn: dict, when_ms: int, amount: int | None = None) -> int:
        """Refund part of what is left of a captured payment (or all of it): a REFUND event,
        the status it leaves, ``updated_at``. Returns the amount refunded."""
        events = txn["events"]
        captured = sum(e["amount"] for e in events if e["event"] == "CAPTURE" and e["success"])
        refunded = sum(e["amount"] for e in events if e["event"] == "REFUND" and e["success"])
        left = max(0, (captured or txn["amount"]) - refunded)
        if left == 0:
            return 0
        if amount is None:
            amount = left if self.rng.random() < 0.4 or left < 2 else self.rng.randrange(1, left)
        amount = min(amount, left)
        status = "REFUNDED" if amount == left else "PARTIALLY_REFUNDED"
        events.append(self._event("REFUND", status, amount, when_ms))
        self._to_settle(txn, len(events) - 1)
        txn["status"] = status
        txn["updated_at"] = iso(when_ms)
        return amount

    def _changed_at(self, stream: str, key: str) -> int:
        obj = self.find(stream, key)
        obj = obj or {}
        stamp = obj.get("updated_at") or obj.get("deleted_at") or obj.get("created_at")
        return to_ms(datetime.fromisoformat(stamp.replace("Z", "+00:00"))) if stamp else 0

    def _collection(self, stream: str) -> SortedCollection:
        """A stream's objects (customers with the deleted ones, as include_deleted lists them)."""
        return {
            "transactions": self.transactions,
            "sessions": self.sessions,
            "settlements": self.settlements_by_created,
            "customers": self.customers_all,
        }[stream]

    def find(self, stream: str, key: str) -> dict | None:
        """One object of a stream by its key."""
        if stream == "payout_transfers":
            return next((c.by_id[key] for c in self.transfers.values() if key in c.by_id), None)
        return self._collection(stream).by_id.get(key)

    def _touch_customer(self, cid: str, now_ms: int) -> None:
        cust = self.customers.by_id[cid]
        cust["updated_at"] = iso(now_ms)
        tiers = ("bronze", "silver", "gold", "platinum")
        tier = cust["attributes"].get("tier")
        cust["attributes"] = {
            **cust["attributes"],
            "tier": tiers[(tiers.index(tier) + 1) % 4] if tier in tiers else "bronze",
        }
        self.customers.resort(cid, now_ms)
        self.customers_all.resort(cid, now_ms)

    def delete_customer(self, cid: str, now_ms: int) -> None:
        """Delete a customer (a GDPR erasure, say): it leaves the list, and with
        ``include_deleted=true`` comes back keeping only its ids and who created and deleted
        it when (Dintero's customers reference, ``include_deleted``)."""
        cust = self.customers.by_id[cid]
        self.customers.remove(cid)
        self.customers_all.by_id[cid] = {
            "id": cid,
            "customer_id": cust["customer_id"],
            "created_at": cust["created_at"],
            "created_by": cust.get("created_by"),
            "deleted_at": iso(now_ms),
            "deleted_by": "emulator",
        }
        self.customers_all.resort(cid, now_ms)

    def dump(self, stream: str, destination: str | None = None) -> list[dict]:
        """Every object of a stream, for tests that compare a destination with the source."""
        if stream in ("transactions", "sessions", "settlements", "customers"):
            return list(self._collection(stream))
        dests = [destination] if destination else list(self.transfers)
        if stream == "payout_transfers":
            return [e for d in dests for e in self.transfers.get(d, SortedCollection())]
        if stream == "payout_destinations":
            return [self.destination(d) for d in dests if d in self.transfers]
        if stream == "payout_balances":
            return [b for d in dests if d in self.transfers for b in self.balances(d)]
        raise KeyError(stream)

    def destination(self, destination: str) -> dict:
        """A payout destination as the Account Management API lists it."""
        return {
            "payout_destination_id": destination,
            "account_id": self.account_id,
            "payout_destination_name": destination,
        }
