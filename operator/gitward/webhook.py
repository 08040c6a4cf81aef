"""The push-webhook receiver: "look now", authenticated, never trusted for content.

``POST /hooks/<namespace>/<app>`` with the app's shared secret (the key
``token`` of the Secret named by ``spec.webhook.secretRef``):

- GitHub: ``X-Hub-Signature-256: sha256=<HMAC-SHA256 of the body>``
- Gitea / Forgejo: ``X-Gitea-Signature: <HMAC-SHA256 hex>``
- GitLab: ``X-Gitlab-Token: <the secret>``
- generic: ``X-Signature-256: sha256=<HMAC-SHA256 of the body>``

Every request is hostile until it proves otherwise; the checks run in this
order, each before anything the next one costs:

1. The namespace from the URL must be a DNS-1123 label and the app name a
   DNS-1123 subdomain, or the answer is 404 before anything is looked up:
   no other value from the URL ever reaches the Kubernetes client.
2. Each (namespace, app) has a token bucket (by default a burst of 10,
   refilled at 1 request/s); over it, 429 with ``Retry-After``. A flooded
   route loses its webhooks and falls back to polling; nothing else stalls.
3. A declared body over 1 MiB is 413.
4. The secret is looked up through a cache: found and not found are both
   kept for a TTL (30 s, so a rotated secret takes effect within it), at most
   4096 routes (least recently used go first). Concurrent requests for one
   route share one lookup; at most 8 lookups run at once (in the operator
   each holds a thread) and at most 64 are pending, beyond that 503. A lookup
   that fails is 503 and not cached; a request that waits over 10 s for one
   is 503 (the lookup still finishes and is cached). Without a secret the
   answer is 401 and the body is not read.
5. The body is read whole (413 past 1 MiB) and its signature checked in
   constant time; a missing or wrong one is 401.
6. A delivery already accepted for the route within 10 minutes (by its
   ``X-GitHub-Delivery``, ``X-Gitea-Delivery``, ``X-Forgejo-Delivery``,
   ``X-Gitlab-Event-UUID`` or ``X-Delivery-Id``; without one, by the digest of
   the body) is acknowledged with 200 and does nothing. The providers sign the
   body only, so a captured delivery replayed under a new ID is not caught
   here; the route's rate limit bounds what that costs.

The payload is never parsed for content: a valid call only wakes the app's
reconcile (202), which fetches and verifies like any poll; 404 if the app is
not running here. Every answer is counted in ``gitward_webhook_requests_total``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gitward import metrics

MAX_BODY = 1024 * 1024
MAX_NAMESPACE = 63
MAX_NAME = 253
DELIVERY_HEADERS = (
    "X-GitHub-Delivery",
    "X-Gitea-Delivery",
    "X-Forgejo-Delivery",
    "X-Gitlab-Event-UUID",
    "X-Delivery-Id",
)
SecretLookup = Callable[[str, str], Awaitable[bytes | None]]
Wake = Callable[[str, str], bool]
Clock = Callable[[], float]
Route = tuple[str, str]

_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_NAMESPACE = re.compile(_LABEL)
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_UNAVAILABLE_RETRY = "10"

_log = structlog.get_logger("gitward.webhook")


def valid_namespace(value: str) -> bool:
    """Whether ``value`` is a DNS-1123 label, as a namespace name must be. Pure."""
    return len(value) <= MAX_NAMESPACE and _NAMESPACE.fullmatch(value) is not None


def valid_name(value: str) -> bool:
    """Whether ``value`` is a DNS-1123 subdomain, as a GitOpsApp name must be. Pure."""
    return len(value) <= MAX_NAME and _NAME.fullmatch(value) is not None


def _raw(value: str) -> bytes:
    """The header's bytes as received (aiohttp decodes invalid UTF-8 with ``surrogateescape``)."""
    return value.encode("utf-8", "surrogateescape")


def _hmac_hex(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def authentic(headers: Mapping[str, str], body: bytes, secret: bytes) -> bool:
    """Whether the request carries a valid signature (or token) for ``secret``. Pure.

    An empty secret authenticates nothing; header values that are not even
    text never match (they are compared as the bytes received, in constant time).
    """
    if not secret:
        return False
    expected = _hmac_hex(secret, body)
    try:
        for header in ("X-Hub-Signature-256", "X-Signature-256"):
            value = headers.get(header)
            if value is not None:
                return hmac.compare_digest(_raw(value), f"sha256={expected}".encode())
        gitea = headers.get("X-Gitea-Signature") or headers.get("X-Forgejo-Signature")
        if gitea is not None:
            return hmac.compare_digest(_raw(gitea), expected.encode())
        token = headers.get("X-Gitlab-Token")
        if token is not None:
            return hmac.compare_digest(_raw(token), secret)
    except UnicodeEncodeError:  # a surrogate no byte decodes to: not from the wire
        return False
    return False


def delivery_key(headers: Mapping[str, str], body: bytes) -> str:
    """What identifies a delivery for replay detection: its provider's ID, else the body's digest. Pure."""
    for header in DELIVERY_HEADERS:
        value = headers.get(header)
        if value:
            digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
            return f"id:{digest}"
    return f"body:{hashlib.sha256(body).hexdigest()}"


class _BusyError(Exception):
    """Too many secret lookups are pending: answer 503 without adding another."""


class _TokenBuckets:
    """One token bucket per key, the least recently used forgotten past ``size`` (a new bucket is full)."""

    def __init__(self, *, burst: float, rate: float, size: int, clock: Clock) -> None:
        self._burst = burst
        self._rate = rate
        self._size = size
        self._clock = clock
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def take(self, key: Hashable) -> int:
        """Take one token: 0 if there was one, else the whole seconds until there will be."""
        now = self._clock()
        tokens, last = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + max(0.0, now - last) * self._rate)
        wait = 0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = max(1, math.ceil((1 - tokens) / self._rate))
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self._size:
            self._buckets.popitem(last=False)
        return wait


class _Seen:
    """Keys remembered for ``window`` seconds, at most ``size`` of them (the oldest forgotten first)."""

    def __init__(self, *, window: float, size: int, clock: Clock) -> None:
        self._window = window
        self._size = size
        self._clock = clock
        self._expiry: OrderedDict[Hashable, float] = OrderedDict()  # insertion order is expiry order

    def _expire(self) -> None:
        now = self._clock()
        while self._expiry:
            key, expires = next(iter(self._expiry.items()))
            if expires > now:
                break
            del self._expiry[key]

    def __contains__(self, key: Hashable) -> bool:
        self._expire()
        return key in self._expiry

    def add(self, key: Hashable) -> None:
        """Remember ``key`` from now on."""
        self._expire()
        self._expiry.pop(key, None)
        self._expiry[key] = self._clock() + self._window
        while len(self._expiry) > self._size:
            self._expiry.popitem(last=False)


class _SecretCache:
    """``secret_for`` behind a TTL + LRU cache, single-flight per route, with bounded concurrency."""

    def __init__(
        self,
        lookup: SecretLookup,
        *,
        ttl: float,
        size: int,
        concurrency: int,
        backlog: int,
        timeout: float,
        clock: Clock,
    ) -> None:
        self._lookup = lookup
        self._timeout = timeout
        self._ttl = ttl
        self._size = size
        self._backlog = backlog
        self._clock = clock
        self._slots = asyncio.Semaphore(concurrency)
        self._entries: OrderedDict[Route, tuple[float, bytes | None]] = OrderedDict()
        self._flights: dict[Route, asyncio.Task[bytes | None]] = {}

    def _cached(self, route: Route) -> tuple[bool, bytes | None]:
        entry = self._entries.get(route)
        if entry is None:
            return False, None
        expires, secret = entry
        if expires <= self._clock():
            del self._entries[route]
            return False, None
        self._entries.move_to_end(route)
        return True, secret

    async def _fetch(self, route: Route) -> bytes | None:
        async with self._slots:  # held until the lookup returns: its thread is busy until then
            secret = await self._lookup(*route)
        self._entries.pop(route, None)
        self._entries[route] = (self._clock() + self._ttl, secret or None)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)
        return secret or None

    def _landed(self, route: Route, flight: asyncio.Task[bytes | None]) -> None:
        if self._flights.get(route) is flight:
            del self._flights[route]
        if not flight.cancelled():
            flight.exception()  # retrieved here: the waiters may all have given up

    async def get(self, route: Route) -> bytes | None:
        """The route's secret, or None; raises _BusyError, TimeoutError or the lookup's own error."""
        hit, secret = self._cached(route)
        if hit:
            return secret
        flight = self._flights.get(route)
        if flight is None:
            if len(self._flights) >= self._backlog:
                raise _BusyError
            flight = asyncio.get_running_loop().create_task(self._fetch(route))
            self._flights[route] = flight
            flight.add_done_callback(lambda done: self._landed(route, done))
        # Shielded: a waiter that gives up (or disconnects) leaves the lookup to finish and be cached.
        return await asyncio.wait_for(asyncio.shield(flight), self._timeout)


def _reply(status: int, result: str, text: str, headers: Mapping[str, str] | None = None) -> web.Response:
    metrics.WEBHOOKS.labels(result).inc()
    return web.Response(status=status, text=text, headers=headers)


async def _read_body(request: web.Request) -> bytes | None:
    """The whole body, or None past :data:`MAX_BODY` (``read(n)`` alone may return a part)."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(MAX_BODY + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY:
            return None
    return b"".join(chunks)


def _metrics_endpoint(
    metrics_access: Callable[[str], Awaitable[bool]] | None,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """``/metrics``, open or (with ``metrics_access``) only for bearer tokens it allows."""

    async def metrics_endpoint(request: web.Request) -> web.Response:
        """Prometheus text, after the token check when one is configured."""
        if metrics_access is not None:
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            try:
                allowed = scheme.lower() == "bearer" and await metrics_access(token.strip())
            except Exception as error:  # noqa: BLE001 - the API server's trouble is the caller's 503
                _log.warning("metrics access review failed", error=type(error).__name__)
                return web.Response(status=503, text="cannot check the token now\n")
            if not allowed:
                return web.Response(status=401, text="unauthorized\n", headers={"WWW-Authenticate": "Bearer"})
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return metrics_endpoint


def make_app(
    *,
    secret_for: SecretLookup,
    wake: Wake,
    serves: Callable[[str, str], bool] | None = None,
    metrics_access: Callable[[str], Awaitable[bool]] | None = None,
    clock: Clock = time.monotonic,
    secret_ttl: float = 30.0,
    cache_size: int = 4096,
    burst: float = 10.0,
    refill_per_second: float = 1.0,
    max_lookups: int = 8,
    lookup_backlog: int = 64,
    lookup_timeout: float = 10.0,
    replay_window: float = 600.0,
    replay_size: int = 10_000,
) -> web.Application:
    """The aiohttp application: the hook endpoint, /metrics and /healthz.

    Args:
        secret_for: Looks up a route's shared secret (None if it has none); only
            ever called with a valid namespace and name.
        wake: Wakes the app's reconcile; False if no such app runs here.
        metrics_access: When set, ``/metrics`` answers only a bearer token it allows (401 otherwise);
            the operator checks the token with TokenReview and SubjectAccessReview.
        serves: Whether an app runs here (from memory): a route it does not serve is 404 at no cost,
            and nothing about it is cached, so an app that starts a moment later is reachable at once.
        clock: Monotonic seconds, for the cache TTL, the rate limit and the replay window.
        secret_ttl: How long a looked-up secret (or its absence) is reused.
        cache_size: How many routes' secrets, and rate-limit buckets, are kept.
        burst: Requests a route may make at once.
        refill_per_second: Requests a route may make per second, sustained.
        max_lookups: Secret lookups running at once.
        lookup_backlog: Secret lookups running or waiting to, beyond which requests get 503.
        lookup_timeout: Seconds a request waits for its secret before 503.
        replay_window: Seconds an accepted delivery is remembered.
        replay_size: Deliveries remembered at most.

    Raises:
        ValueError: A limit that would refuse everything, or never refill.
    """
    if (
        min(burst, refill_per_second, max_lookups, lookup_backlog, lookup_timeout, cache_size, replay_size)
        <= 0
    ):
        raise ValueError("webhook limits must be positive")
    secrets = _SecretCache(
        secret_for,
        ttl=secret_ttl,
        size=cache_size,
        concurrency=max_lookups,
        backlog=lookup_backlog,
        timeout=lookup_timeout,
        clock=clock,
    )
    buckets = _TokenBuckets(burst=burst, rate=refill_per_second, size=cache_size, clock=clock)
    delivered = _Seen(window=replay_window, size=replay_size, clock=clock)

    async def hook(request: web.Request) -> web.Response:  # noqa: PLR0911 - one answer per check, in order
        namespace, name = request.match_info["namespace"], request.match_info["app"]
        if not (valid_namespace(namespace) and valid_name(name)):
            return _reply(404, "invalid-route", "no such app\n")
        route = (namespace, name)
        if serves is not None and not serves(namespace, name):
            return _reply(404, "unknown-app", "no such app\n")
        wait = buckets.take(route)
        if wait:
            return _reply(429, "rate-limited", "too many requests\n", {"Retry-After": str(wait)})
        if request.content_length is not None and request.content_length > MAX_BODY:
            return _reply(413, "too-large", "body too large\n")
        try:
            secret = await secrets.get(route)
        except (_BusyError, TimeoutError):
            return _reply(503, "unavailable", "busy, retry later\n", {"Retry-After": _UNAVAILABLE_RETRY})
        except Exception as error:  # noqa: BLE001 - whatever the lookup raised, the caller gets a 503
            _log.warning("webhook secret lookup failed", app=f"{namespace}/{name}", error=str(error)[:600])
            return _reply(503, "lookup-failed", "retry later\n", {"Retry-After": _UNAVAILABLE_RETRY})
        if not secret:
            return _reply(401, "unauthorized", "unauthorized\n")
        body = await _read_body(request)
        if body is None:
            return _reply(413, "too-large", "body too large\n")
        if not authentic(request.headers, body, secret):
            return _reply(401, "unauthorized", "unauthorized\n")
        delivery = (namespace, name, delivery_key(request.headers, body))
        if delivery in delivered:
            return _reply(200, "duplicate", "duplicate delivery ignored\n")
        if not wake(namespace, name):
            return _reply(404, "unknown-app", "no such app\n")
        delivered.add(delivery)  # only once accepted: a delivery to an app not yet running may come again
        return _reply(202, "accepted", "reconcile requested\n")

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post("/hooks/{namespace}/{app}", hook)
    app.router.add_get("/metrics", _metrics_endpoint(metrics_access))
    app.router.add_get("/healthz", healthz)
    return app
