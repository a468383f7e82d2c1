"""Calling the Prefect API as the remote service it is: errors sorted, waits bounded and ours.

Most users run on Prefect Cloud, tens of milliseconds from the worker, rate-limited per account
(429 with ``Retry-After``, https://docs.prefect.io/v3/concepts/rate-limits) and now and then
answering 5xx or nothing. Prefect's own client retries 408, 429, 502 and 503 and some network
errors by itself, ``PREFECT_CLIENT_MAX_RETRIES`` (5) times, sleeping what ``Retry-After`` asks
or 2 to 32 s: one call can take minutes. Where this package must decide how long it waits (a
token renewal that a request waits on, a slot, a lease), it calls with those retries off
(:func:`own_retries`) and retries here, with :class:`Backoff`, which honours ``Retry-After``.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import httpx
import prefect.context
from prefect.blocks.core import Block
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES

from prefect_dintero.errors import StoreUnavailable
from prefect_dintero.http.retry import RetryPolicy, parse_retry_after

T = TypeVar("T")
B = TypeVar("B", bound=Block)

#: Statuses worth asking again: the request may succeed later.
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class PrefectUnavailable(StoreUnavailable):
    """The Prefect API did not answer usefully (429, 5xx, or no answer) for as long as this
    package could wait. Nothing was sent to Dintero because of it.

    Its wait is spent, so a request that met it is not sent again at once (a sync stream may
    still resume later, as after any transient error)."""

    attempts_exhausted = True


def _response_of(exc: BaseException) -> httpx.Response | None:
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, httpx.HTTPStatusError):
            return seen.response
        seen = seen.__cause__ or seen.__context__
    return None


def status_of(exc: BaseException) -> int | None:
    """The HTTP status behind an error from Prefect's client, if there is one."""
    response = _response_of(exc)
    return response.status_code if response is not None else None


def retry_after_of(exc: BaseException) -> float | None:
    """The ``Retry-After`` the Prefect API sent with an error, in seconds."""
    response = _response_of(exc)
    if response is None:
        return None
    return parse_retry_after(response.headers.get("Retry-After"))


def is_transient(exc: BaseException) -> bool:
    """Whether the Prefect API may answer the same call later: no answer, 429 or 5xx."""
    if isinstance(exc, httpx.TransportError):
        return True
    status = status_of(exc)
    return status in TRANSIENT_STATUSES


def describe(exc: BaseException) -> str:
    """A short, secret-free name for a failed Prefect call: ``503``, ``ConnectError``."""
    status = status_of(exc)
    if status is not None:
        return f"HTTP {status}"
    return type(exc).__name__


class Backoff:
    """Waits between tries of a Prefect API call, on the request policy's backoff
    (:meth:`RetryPolicy.paced_wait`): 0.5, 1, 2, 4, 8, then 10 s, each at least what a
    ``Retry-After`` asked (up to ``retry_after_cap``). That is at most 10 tries in any minute."""

    def __init__(self, first: float = 0.5, cap: float = 10.0, retry_after_cap: float = 60.0):
        self.policy = RetryPolicy(
            backoff_base=first, backoff_cap=cap, retry_after_cap=retry_after_cap
        )
        self.tries = 0

    def next(self, retry_after: float | None = None) -> float:
        self.tries += 1
        return self.policy.paced_wait(self.tries, retry_after)


def background(target: Callable[..., Any], name: str, *args: Any) -> threading.Thread:
    """Start a daemon thread running ``target(*args)`` in a copy of the caller's context, so it
    talks to the Prefect API the caller's settings name (a new thread would see the defaults)."""
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(target, *args), name=name, daemon=True)
    thread.start()
    return thread


#: Settings objects seen lately, each with its copy without retries: (original, copy) by the
#: original's id. The entry holds the original, so its id cannot be reused by another object
#: while the entry lives, and an entry is used only for the very object it was made from.
_no_retry_settings: OrderedDict[int, tuple[Any, Any]] = OrderedDict()
_no_retry_lock = threading.Lock()
#: Settings objects remembered at once (a process uses one or two; tests make many).
NO_RETRY_SETTINGS_KEPT = 8


@contextlib.contextmanager
def own_retries() -> Iterator[None]:
    """Prefect's client makes one attempt per call inside this block: the caller retries."""
    context = prefect.context.get_settings_context()
    original = context.settings
    with _no_retry_lock:
        entry = _no_retry_settings.get(id(original))
        if entry is not None and entry[0] is original:
            _no_retry_settings.move_to_end(id(original))
            settings = entry[1]
        else:
            # Building settings costs ~40 ms: once per settings object.
            settings = original.copy_with_update(updates={PREFECT_CLIENT_MAX_RETRIES: 0})
            _no_retry_settings[id(original)] = (original, settings)
            while len(_no_retry_settings) > NO_RETRY_SETTINGS_KEPT:
                _no_retry_settings.popitem(last=False)
    with prefect.context.SettingsContext(profile=context.profile, settings=settings):
        yield


def call(
    fn: Callable[[], T],
    *,
    until: float | None,
    what: str,
    backoff: Backoff | None = None,
    on_error: Callable[[BaseException], None] | None = None,
) -> T:
    """``fn()``, one attempt per try with Prefect's retries off, tried again on transient
    errors until the monotonic time ``until`` (None: one try).

    Raises:
        PrefectUnavailable: the last try failed transiently and no time was left.
        Exception: anything else ``fn`` raised (a missing block, a refused request).
    """
    backoff = backoff or Backoff()
    while True:
        try:
            with own_retries():
                return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if on_error is not None:
                on_error(exc)
            wait = backoff.next(retry_after_of(exc))
            left = until - time.monotonic() if until is not None else 0.0
            if left <= 0:
                raise PrefectUnavailable(
                    f"the Prefect API did not answer {what} ({describe(exc)}); nothing was sent "
                    "to Dintero because of it"
                ) from None
            time.sleep(min(wait, left))  # a last try at the deadline


# Background reads (which login a session block holds) run once a minute at most in a process;
# opening a client each time builds an SSL context (~60 ms of CPU), so one stays open per API URL.
_kept_clients: dict[str | None, SyncPrefectClient] = {}
_kept_clients_lock = threading.Lock()


def kept_client() -> SyncPrefectClient:
    """This process's open Prefect client for the current API URL."""
    url = PREFECT_API_URL.value()
    with _kept_clients_lock:
        client = _kept_clients.get(url)
        if client is None:
            client = get_client(sync_client=True)
            client.__enter__()
            _kept_clients[url] = client
        return client


def drop_kept_client(client: SyncPrefectClient) -> None:
    """Forget a kept client that failed (its server may have gone and come back)."""
    with _kept_clients_lock:
        for url, kept in list(_kept_clients.items()):
            if kept is client:
                del _kept_clients[url]
    with contextlib.suppress(Exception):
        client.__exit__(None, None, None)


def load_block(block_type: type[B], name: str) -> B:
    """``block_type.load(name)`` from sync code, typed. Prefect's ``load`` runs its async form
    in an event loop unless told otherwise, and is typed as either."""
    return cast(B, block_type.load(name, _sync=True))  # type: ignore[call-arg]


def save_block(block: Block, name: str) -> None:
    """``block.save(name, overwrite=True)`` from sync code (see :func:`load_block`)."""
    block.save(name, overwrite=True, _sync=True)  # type: ignore[call-arg]
