"""Authenticated Dintero clients over httpx, sync and async, with per-request retries."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from typing import Any, Literal

import httpx
from pydantic import SecretStr

from .auth.client_credentials import ClientCredentials
from .auth.httpx_auth import DinteroAuth
from .auth.provider import ClientCredentialsProvider, OIDCSessionProvider, TokenProvider
from .auth.store import TokenStore
from .auth.tokens import Token
from .errors import MalformedResponseError, RunBudgetExceeded, RunInterrupted
from .http import deadline
from .http.adaptive_limit import AdaptiveLimit, limit_for
from .http.retry import RetryPolicy, parse_retry_after
from .http.transport import (
    DEFAULT_TIMEOUT,
    ClientStats,
    check_response,
    decode_json,
    default_headers,
    on_retry_counter,
    send_async,
    send_sync,
    ssl_context,
)
from .streams.discovery import apayout_destination_ids, payout_destination_ids
from .streams.paginators import apages, pages
from .streams.personal_data import PersonalData
from .streams.queries import RecordQuery

Host = Literal["api", "checkout"]


class _ClientBase:
    """What the sync and async clients share: hosts, provider, policy, counters."""

    def __init__(
        self,
        credentials: ClientCredentials,
        *,
        token_provider: TokenProvider | None = None,
        session: Token | None = None,
        session_name: str | None = None,
        store: TokenStore | None = None,
        leeway: float | None = None,
        timeout: httpx.Timeout | float | None = None,
        retry_policy: RetryPolicy | None = None,
        run_ends_at: float | None = None,
        stop_reason: Callable[[], str | None] | None = None,
        limiter: AdaptiveLimit | Literal["account"] | None = "account",
    ) -> None:
        self.credentials = credentials
        self.stats = ClientStats()
        if token_provider is None:
            if session is not None or session_name is not None:
                token_provider = OIDCSessionProvider(
                    credentials,
                    session_name or "default",
                    initial=session,
                    store=store,
                    leeway=leeway,
                    stats=self.stats,
                )
            else:
                token_provider = ClientCredentialsProvider(
                    credentials, store=store, leeway=leeway, stats=self.stats
                )
        self.token_provider = token_provider
        self.retry_policy = retry_policy or credentials.retry_policy
        self._timeout = timeout if timeout is not None else DEFAULT_TIMEOUT
        self._deadline = credentials.request_deadline_seconds
        #: When the run using this client must be over (``time.time()``), if it has a budget:
        #: no request then lasts past it.
        self.run_ends_at = run_ends_at
        #: Asked before every request and before each page is committed: why the run must stop
        #: now (it may no longer hold its account, say), or None to go on.
        self.stop_reason = stop_reason
        #: The limit on requests in flight: by default the account's adaptive limit, one per
        #: account in the process (``adaptive_limit.limit_for``); None: requests are not paced.
        self.limiter = (
            limit_for(
                credentials.account_id, credentials.api_url, credentials.max_concurrent_requests
            )
            if limiter == "account"
            else limiter
        )
        self._headers = default_headers(credentials.system_name)

    def check_run(self) -> None:
        """Raise if the run must stop: its budget is spent, or ``stop_reason`` gives a reason.

        Raises:
            RunInterrupted: the run must stop; what was committed stays.
        """
        if self.run_ends_at is not None and self.run_ends_at <= time.time():
            raise RunBudgetExceeded(
                "the run's budget is spent (timeout_minutes): no more requests are sent; the "
                "committed pages are kept and the next run resumes"
            )
        reason = self.stop_reason() if self.stop_reason is not None else None
        if reason is not None:
            raise RunInterrupted(
                f"the run stopped: {reason}; the committed pages are kept and the next run resumes"
            )

    def _answered(
        self, answered: Callable[..., None], response: httpx.Response, started: float
    ) -> None:
        """Tell the limit how a request went; a server's Retry-After pauses the account no
        longer than this client would wait it."""
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        answered(
            response.status_code,
            time.monotonic() - started,
            self.retry_policy.capped_retry_after(retry_after),
        )

    def _request_deadline(self) -> float:
        """The request's deadline: the credentials', or what the run's budget has left."""
        self.check_run()
        if self.run_ends_at is None:
            return self._deadline
        return min(self._deadline, self.run_ends_at - time.time())

    def url(self, path: str, host: Host = "api") -> str:
        """An absolute URL on the api or checkout host; absolute URLs pass through."""
        if path.startswith(("https://", "http://")):
            return path
        base = self.credentials.api_url if host == "api" else self.credentials.checkout_url
        return f"{base}/{path.lstrip('/')}"

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            return decode_json(response.content)
        except ValueError:
            raise MalformedResponseError(
                "the body is not valid JSON",
                status_code=response.status_code,
                method=response.request.method,
                url=str(response.request.url.copy_with(query=None)),
                hint="The response was cut off or is not from Dintero; nothing from it was used",
            ) from None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(account_id={self.credentials.account_id!r}, "
            f"api_url={self.credentials.api_url!r}, provider={self.token_provider!r})"
        )


class DinteroClient(_ClientBase):
    """A sync Dintero client: Bearer auth with renewal, retries, clear errors.

    Examples:
        ```python
        from prefect_dintero.client import DinteroClient
        from prefect_dintero.auth.client_credentials import ClientCredentials
        from prefect_dintero.emulator import running_emulator

        with running_emulator() as emulator:
            creds = ClientCredentials(**emulator.credential_fields())
            with DinteroClient(creds) as client:
                page = client.get_json("/v1/transactions", host="checkout", params={"limit": 5})
                assert len(page) == 5
        ```
    """

    def __init__(
        self,
        credentials: ClientCredentials,
        *,
        transport: httpx.BaseTransport | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(credentials, **kwargs)
        if transport is not None:
            self.token_provider.use_transport(transport)
        self._http = deadline.install(
            httpx.Client(
                auth=DinteroAuth(self.token_provider, self.stats),
                timeout=self._timeout,
                headers=self._headers,
                transport=transport,
                verify=ssl_context(),
            )
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        host: Host = "api",
        params: Any = None,
        json: Any = None,
    ) -> httpx.Response:
        """Send with retries on transient failures; return the 2xx response or raise."""
        url = self.url(path, host)

        def attempt() -> httpx.Response:
            # A fresh request per attempt: auth is re-applied, so a retry never reuses a dead token.
            request = self._http.build_request(method, url, params=params, json=json)
            if self.limiter is None:
                response = send_sync(self._http, request, deadline=self._request_deadline())
            else:
                # Each attempt holds one of the account's slots, and tells the limit how it went.
                # The wait for a slot ends with the run (check_run).
                with self.limiter.slot(self.check_run) as answered:
                    started = time.monotonic()
                    response = send_sync(self._http, request, deadline=self._request_deadline())
                    self._answered(answered, response, started)
            return check_response(response, self.stats)

        return self.retry_policy.call(attempt, on_retry_counter(self.stats), self.run_ends_at)

    def get_json(self, path: str, *, host: Host = "api", params: Any = None) -> Any:
        """GET and decode JSON."""
        return self._json(self.request("GET", path, host=host, params=params))

    def iter_records(
        self,
        stream: str,
        *,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        payout_destinations: list[str] | None = None,
        page_size: int = 100,
        account_id: str | None = None,
        personal_data: PersonalData = "keep",
        personal_data_key: SecretStr | None = None,
    ) -> Iterator[dict]:
        """Every record of a stream, page by page (memory stays flat), as Dintero sends it.

        The stream's host, path and page shape come from the same catalog and paginators as
        the sync's. Records are filtered on ``created_at``: by the API where it can
        (transactions, sessions, settlements), here otherwise.

        Args:
            stream: a stream of the catalog (``prefect_dintero.streams.catalog.CATALOG``).
            created_from: only records created at or after this (UTC if naive).
            created_to: only records created at or before this.
            payout_destinations: for ``payout_transfers``; None reads the account's list.
            page_size: records per request (capped at the endpoint's maximum).
            account_id: another account the credentials may read; default theirs.
            personal_data: ``keep``, ``hash`` or ``drop`` the stream's personal fields (see
                :mod:`prefect_dintero.streams.personal_data`).
            personal_data_key: the HMAC key ``hash`` needs (at least 32 bytes).

        Examples:
            ```python
            from datetime import datetime, timedelta, UTC
            from prefect_dintero.client import DinteroClient
            from prefect_dintero.auth.client_credentials import ClientCredentials
            from prefect_dintero.emulator import running_emulator

            with running_emulator() as emulator:
                creds = ClientCredentials(**emulator.credential_fields())
                week_ago = emulator.now() - timedelta(days=7)
                with DinteroClient(creds) as client:
                    recent = list(client.iter_records("transactions", created_from=week_ago))
                    transfers = list(client.iter_records("payout_transfers"))
                assert recent and all(t["created_at"] >= week_ago.isoformat()[:19] for t in recent)
                assert {t["payout_destination_id"] for t in transfers} == {"PD-main", "PD-store-2"}
            ```
        """
        query = RecordQuery(
            stream,
            created_from=created_from,
            created_to=created_to,
            page_size=page_size,
            personal_data=personal_data,
            personal_data_key=personal_data_key,
        )
        account = account_id or self.credentials.account_id
        if query.spec.per_destination and not payout_destinations:
            payout_destinations = payout_destination_ids(self, account)
        for path in query.paths(account, payout_destinations):

            def fetch(params: dict[str, Any], path: str = path) -> Any:
                return self.get_json(path, host=query.spec.host, params=params)

            params, rows = query.params(), query.spec.check_keys
            for page in pages(fetch, query.paginator(), base_params=params, check_rows=rows):
                yield from query.keep(page.rows)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DinteroClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncDinteroClient(_ClientBase):
    """The async twin of :class:`DinteroClient`.

    Examples:
        ```python
        import asyncio
        from prefect_dintero.client import AsyncDinteroClient
        from prefect_dintero.auth.client_credentials import ClientCredentials
        from prefect_dintero.emulator import running_emulator

        async def read(creds):
            async with AsyncDinteroClient(creds) as client:
                page = await client.get_json("/v1/transactions", host="checkout")
                return page, [c async for c in client.iter_records("customers")]

        with running_emulator() as emulator:
            creds = ClientCredentials(**emulator.credential_fields())
            page, customers = asyncio.run(read(creds))
            assert len(page) == 10 and len(customers) == len(emulator.dump("customers"))
        ```
    """

    def __init__(
        self,
        credentials: ClientCredentials,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        **kwargs: Any,
    ) -> None:
        # Token requests are the provider's, made in a thread with a sync client: over the
        # network, or over a sync transport given to the provider (``use_transport``).
        super().__init__(credentials, **kwargs)
        self._http = httpx.AsyncClient(
            auth=DinteroAuth(self.token_provider, self.stats),
            timeout=self._timeout,
            headers=self._headers,
            transport=transport,
            verify=ssl_context(),
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        host: Host = "api",
        params: Any = None,
        json: Any = None,
    ) -> httpx.Response:
        url = self.url(path, host)

        async def attempt() -> httpx.Response:
            request = self._http.build_request(method, url, params=params, json=json)
            if self.limiter is None:
                response = await send_async(self._http, request, deadline=self._request_deadline())
            else:
                async with self.limiter.aslot(self.check_run) as answered:
                    started = time.monotonic()
                    response = await send_async(
                        self._http, request, deadline=self._request_deadline()
                    )
                    self._answered(answered, response, started)
            return check_response(response, self.stats)

        return await self.retry_policy.acall(
            attempt, on_retry_counter(self.stats), self.run_ends_at
        )

    async def get_json(self, path: str, *, host: Host = "api", params: Any = None) -> Any:
        return self._json(await self.request("GET", path, host=host, params=params))

    async def iter_records(self, stream: str, **options: Any) -> AsyncIterator[dict]:
        """Every record of a stream: :meth:`DinteroClient.iter_records`, with its arguments,
        async (the class's example reads one)."""
        destinations = options.pop("payout_destinations", None)
        account = options.pop("account_id", None) or self.credentials.account_id
        query = RecordQuery(stream, **options)
        if query.spec.per_destination and not destinations:
            destinations = await apayout_destination_ids(self, account)
        for path in query.paths(account, destinations):

            async def fetch(params: dict[str, Any], path: str = path) -> Any:
                return await self.get_json(path, host=query.spec.host, params=params)

            params, rows = query.params(), query.spec.check_keys
            async for page in apages(fetch, query.paginator(), base_params=params, check_rows=rows):
                for record in query.keep(page.rows):
                    yield record

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncDinteroClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
