"""The push-webhook receiver: one route per repository, authenticated, never trusted for content.

A Git host sends one push event per repository, so the route is per
repository too: ``POST /hook/<token>``, where the token is
:func:`route_token` of the app's shared secret (the key ``token`` of the
Secret named by ``spec.webhook.secretRef``) and the identity of its
``spec.source.url``. Every app that reads one repository with one secret
shares one route, whatever its branch or namespace, and the operator shows
it in the app's ``status.webhookPath``. The token is an HMAC under a key
derived from the secret: it names no namespace or app, reveals nothing about
the secret, and cannot be guessed without it. The key is derived (not the
secret itself) because the token is shown in status: were it an HMAC under
the secret, anyone reading it would hold a valid signature for one body.

The same secret signs every delivery:

- GitHub: ``X-Hub-Signature-256: sha256=<HMAC-SHA256 of the body>``
- Gitea / Forgejo: ``X-Gitea-Signature`` / ``X-Forgejo-Signature: <HMAC-SHA256 hex>``
- GitLab: ``X-Gitlab-Token: <the secret>``
- generic: ``X-Signature-256: sha256=<HMAC-SHA256 of the body>``

The route table (:class:`Routes`) is in memory, kept by the operator as apps
start, change and stop; answering a request does no I/O beyond reading its
body, so an answer takes milliseconds. Every request is hostile until it
proves otherwise; the checks run in this order, each before anything the
next one costs:

1. The path segment must be exactly 64 lowercase hex characters, or 404: no
   other value from the URL is used at all, and this one only as a key.
2. The route is looked up in memory; an unknown token is 404 at no cost
   (nothing is remembered about it, so a route registered a moment later is
   reachable at once).
3. Each route has a token bucket (by default a burst of 10, refilled at
   1 request/s); over it, 429 with ``Retry-After``. Who knows a route's token
   can spend its bucket without the secret: the route then falls back to
   polling, and nothing else stalls.
4. A declared body over 1 MiB is 413, before a byte of it is read.
5. The body is read whole, 413 past 1 MiB (a body without a declared length),
   and within :data:`BODY_TIMEOUT` of the request's head: a body that is not
   all there by then (a ``Content-Length`` larger than what is sent, a chunked
   body that never ends, a client that sends a byte now and then) is 408 and
   the connection is closed at once.
6. The signature (or token) is checked against the route's secret in
   constant time; a missing or wrong one is 401.
7. A delivery already accepted for the route within 10 minutes (by its
   ``X-GitHub-Delivery``, ``X-Gitea-Delivery``, ``X-Forgejo-Delivery``,
   ``X-Gitlab-Event-UUID`` or ``X-Delivery-Id``; without one, by the digest of
   the body) is acknowledged with 200 and does nothing. The providers sign the
   body only, so a captured delivery replayed under a new ID is not caught
   here; the route's rate limit bounds what that costs.
8. Only now, authentic, is the payload parsed, and only to route: its
   top-level ``ref`` (JSON, or GitHub's form encoding ``payload=<JSON>``).
   ``refs/heads/<branch>`` wakes the route's apps that follow that branch;
   ``refs/tags/...`` wakes none; anything else (no ref, not JSON, too deep)
   wakes every app of the route. Nothing else in the payload is read: a
   woken app fetches and verifies like any poll, so a payload that lies about
   its ref costs at most a look, never a deploy.

An authentic delivery is 202, with how many apps were woken (possibly none:
no app on the route follows the pushed branch). Every answer is counted in
``gitward_webhook_requests_total`` by result.

No request holds the port for long: the body is bounded by
:data:`BODY_TIMEOUT` (above), and a connection that has not sent a whole
request head within :data:`IDLE_TIMEOUT` (of opening, or of its last answer)
is closed by the server :func:`make_runner` builds. An answer given before the
body was read (404, 413, 429) leaves aiohttp draining the rest for at most its
lingering time (10 s) before it closes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import re
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping
from types import MappingProxyType

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gitward import metrics

MAX_BODY = 1024 * 1024
BODY_TIMEOUT = 10.0
"""Seconds a request on a known route has, once its head is in, to send its whole body (then 408, closed)."""
IDLE_TIMEOUT = 10.0
"""Seconds a connection may be open (or idle after an answer) without a whole request head (then closed)."""
ROUTE_PREFIX = "/hook/"
DELIVERY_HEADERS = (
    "X-GitHub-Delivery",
    "X-Gitea-Delivery",
    "X-Forgejo-Delivery",
    "X-Gitlab-Event-UUID",
    "X-Delivery-Id",
)
BRANCH_PREFIX = "refs/heads/"
TAG_PREFIX = "refs/tags/"
App = tuple[str, str]
"""An app by (namespace, name)."""
Wake = Callable[[str, str], bool]
Clock = Callable[[], float]

_ROUTE_KEY_LABEL = b"gitward.dev/webhook-route-key/v1"
_TOKEN = re.compile(r"[0-9a-f]{64}")
_FORM = "application/x-www-form-urlencoded"
_FORM_FIELDS = 64

_log = structlog.get_logger("gitward.webhook")


def route_token(secret: bytes, repository: str) -> str:
    """The route of the apps that read ``repository`` with the webhook secret ``secret``. Pure.

    ``repository`` is the source URL's ``RepoURL.identity``. The token is
    HMAC-SHA256, under a key derived from the secret, of the domain-separated
    repository identity, in lowercase hex: it does not depend on the app's
    namespace, name or branch, and differs per secret and per repository.
    Deriving the key first means the token, which is shown in the app's
    status, is never a valid signature of any body under the secret.
    """
    key = hmac.new(secret, _ROUTE_KEY_LABEL, hashlib.sha256).digest()
    message = b"repository\x00" + repository.encode("utf-8", "surrogatepass")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def route_path(token: str) -> str:
    """The URL path a Git host posts to for ``token`` (what status ``webhookPath`` shows). Pure."""
    return ROUTE_PREFIX + token


def valid_token(value: str) -> bool:
    """Whether ``value`` is a route token: 64 lowercase hex characters. Pure."""
    return _TOKEN.fullmatch(value) is not None


class Route:
    """The apps that share one token: one secret, one repository, each app with the branch it follows."""

    __slots__ = ("_apps", "secret", "token")

    def __init__(self, token: str, secret: bytes) -> None:
        self.token = token
        self.secret = secret
        self._apps: dict[App, str] = {}

    @property
    def apps(self) -> Mapping[App, str]:
        """Each app on the route, with the branch it follows (a live, read-only view)."""
        return MappingProxyType(self._apps)

    def apps_for(self, ref: str | None) -> tuple[App, ...]:
        """The apps a push of ``ref`` wakes. Pure.

        A branch wakes the apps that follow it, a tag none, and anything else
        (None: the payload named no ref that could be read) every app.
        """
        if ref is not None and ref.startswith(BRANCH_PREFIX) and len(ref) > len(BRANCH_PREFIX):
            branch = ref.removeprefix(BRANCH_PREFIX)
            return tuple(app for app, followed in self._apps.items() if followed == branch)
        if ref is not None and ref.startswith(TAG_PREFIX):
            return ()
        return tuple(self._apps)

    def __repr__(self) -> str:  # never the secret
        return f"Route({self.token[:12]}..., {len(self._apps)} apps)"


class Routes:
    """The route table: token -> :class:`Route`, kept in memory by the operator's event loop. No I/O.

    One entry per app (the route it is on), and no route without an app, so
    the table is as large as the number of apps running here, never larger.
    """

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}
        self._tokens: dict[App, str] = {}

    def register(self, app: App, *, secret: bytes, repository: str, branch: str) -> str:
        """Put ``app`` on the route of (``secret``, ``repository``) and return its token.

        Registering again with the same values changes nothing; with a new
        secret or repository the app moves to its new route and leaves the old
        one, which goes when no app is left on it.

        Raises:
            ValueError: The secret is empty (it could authenticate nothing).
        """
        if not secret:
            raise ValueError("a webhook route needs a non-empty secret")
        token = route_token(secret, repository)
        old = self._tokens.get(app)
        if old is not None and old != token:
            self._leave(app, old)
        route = self._routes.get(token)
        if route is None:
            route = self._routes[token] = Route(token, secret)
        route._apps[app] = branch  # noqa: SLF001 - the table owns its routes
        self._tokens[app] = token
        return token

    def forget(self, app: App) -> None:
        """Take ``app`` off its route (nothing if it is on none)."""
        token = self._tokens.pop(app, None)
        if token is not None:
            self._leave(app, token)

    def _leave(self, app: App, token: str) -> None:
        route = self._routes.get(token)
        if route is None:
            return
        route._apps.pop(app, None)  # noqa: SLF001 - the table owns its routes
        if not route._apps:  # noqa: SLF001
            del self._routes[token]

    def lookup(self, token: str) -> Route | None:
        """The route of ``token``, or None."""
        return self._routes.get(token)

    def token_of(self, app: App) -> str | None:
        """The token of the route ``app`` is on, or None."""
        return self._tokens.get(app)

    def __len__(self) -> int:
        """How many routes there are."""
        return len(self._routes)


def pushed_ref(body: bytes, content_type: str = "application/json") -> str | None:
    """The payload's top-level ``ref``, or None if it has none that can be read. Pure; never raises.

    JSON (GitHub, Gitea, Forgejo and GitLab all send ``"ref": "refs/heads/<branch>"``),
    or GitHub's form encoding with the JSON in its ``payload`` field. Only ever
    called on an authenticated body of at most :data:`MAX_BODY` bytes; used
    only to choose whom to wake, never for what they deploy.
    """
    try:
        text = body.decode("utf-8")
        if content_type == _FORM:
            fields = urllib.parse.parse_qs(text, strict_parsing=True, max_num_fields=_FORM_FIELDS)
            [text] = fields.get("payload", [""])
        payload = json.loads(text)
    except (ValueError, RecursionError):  # not text, not a form, not JSON, nested too deep
        return None
    ref = payload.get("ref") if isinstance(payload, dict) else None
    return ref if isinstance(ref, str) else None


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


class _TokenBuckets:
    """One token bucket per key (a new bucket is full)."""

    def __init__(self, *, burst: float, rate: float, clock: Clock) -> None:
        self._burst = burst
        self._rate = rate
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def _refilled(self, key: str, now: float) -> float:
        tokens, last = self._buckets.get(key, (self._burst, now))
        return min(self._burst, tokens + max(0.0, now - last) * self._rate)

    def take(self, key: str) -> int:
        """Take one token: 0 if there was one, else the whole seconds until there will be."""
        now = self._clock()
        tokens = self._refilled(key, now)
        wait = 0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = max(1, math.ceil((1 - tokens) / self._rate))
        self._buckets[key] = (tokens, now)
        return wait

    def prune(self, alive: Callable[[str], bool]) -> None:
        """Drop the buckets of keys no longer alive, and full ones (a full bucket is as good as none)."""
        now = self._clock()
        gone = [key for key in self._buckets if not alive(key) or self._refilled(key, now) >= self._burst]
        for key in gone:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


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


async def _hang_up(request: web.Request, response: web.Response) -> web.Response:
    """Send ``response``, then close the connection at once: no lingering for a body that is not coming."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    if request.transport is not None:
        request.transport.close()  # after what was written is flushed
    return response


def _wake_each(wake: Wake, apps: tuple[App, ...]) -> int:
    """Wake each app; how many were (a wake that fails counts as not woken, never as a 500)."""
    woken = 0
    for namespace, name in apps:
        try:
            woken += bool(wake(namespace, name))
        except Exception as error:  # noqa: BLE001 - one app's trouble must not cost the others their wake
            _log.warning("webhook wake failed", app=f"{namespace}/{name}", error=type(error).__name__)
    return woken


def _accepted(ref: str | None, woken: int, matched: int) -> str:
    """The text of a 202: how many apps were woken, and why none when none."""
    if matched:
        missed = "" if woken == matched else f" ({matched - woken} not running here)"
        return f"accepted: {woken} app(s) woken{missed}\n"
    if ref is not None and ref.startswith(TAG_PREFIX):
        return "accepted: a tag push wakes no app\n"
    return "accepted: authentic, but no app on this route follows the pushed branch; 0 app(s) woken\n"


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
    routes: Routes,
    wake: Wake,
    metrics_access: Callable[[str], Awaitable[bool]] | None = None,
    clock: Clock = time.monotonic,
    burst: float = 10.0,
    refill_per_second: float = 1.0,
    replay_window: float = 600.0,
    replay_size: int = 10_000,
    body_timeout: float = BODY_TIMEOUT,
) -> web.Application:
    """The aiohttp application: ``POST /hook/<token>``, /metrics and /healthz.

    Args:
        routes: The route table, kept by the caller (on the same event loop) as apps come and go.
        wake: Wakes one app's reconcile by (namespace, name); False if no such app runs here.
        metrics_access: When set, ``/metrics`` answers only a bearer token it allows (401 otherwise);
            the operator checks the token with TokenReview and SubjectAccessReview.
        clock: Monotonic seconds, for the rate limit and the replay window.
        burst: Requests a route may make at once.
        refill_per_second: Requests a route may make per second, sustained.
        replay_window: Seconds an accepted delivery is remembered.
        replay_size: Deliveries remembered at most (over all routes).
        body_timeout: Seconds a request on a known route has to send its whole body (then 408, closed).

    Raises:
        ValueError: A limit that would refuse everything, or never refill.
    """
    if min(burst, refill_per_second, replay_size, body_timeout) <= 0:
        raise ValueError("webhook limits must be positive")
    buckets = _TokenBuckets(burst=burst, rate=refill_per_second, clock=clock)
    delivered = _Seen(window=replay_window, size=replay_size, clock=clock)

    async def hook(request: web.Request) -> web.Response:  # noqa: PLR0911 - one answer per check, in order
        token = request.match_info["token"]
        if not valid_token(token):
            return _reply(404, "invalid-route", "no such route\n")
        route = routes.lookup(token)
        if route is None:
            return _reply(404, "unknown-route", "no such route\n")
        wait = buckets.take(token)
        if len(buckets) > len(routes):  # a route went away since: its bucket goes too
            buckets.prune(lambda key: routes.lookup(key) is not None)
        if wait:
            return _reply(429, "rate-limited", "too many requests\n", {"Retry-After": str(wait)})
        if request.content_length is not None and request.content_length > MAX_BODY:
            return _reply(413, "too-large", "body too large\n")
        try:
            async with asyncio.timeout(body_timeout):
                body = await _read_body(request)
        except TimeoutError:  # a body promised and not sent: the HTTP parser would wait for it forever
            return await _hang_up(request, _reply(408, "too-slow", "request body not received in time\n"))
        if body is None:
            return _reply(413, "too-large", "body too large\n")
        # As it is now: apps may have come or gone while the body was read (one token, one secret).
        route = routes.lookup(token) or route
        if not authentic(request.headers, body, route.secret):
            return _reply(401, "unauthorized", "unauthorized\n")
        delivery = (token, delivery_key(request.headers, body))
        if delivery in delivered:
            return _reply(200, "duplicate", "duplicate delivery ignored\n")
        content_type = request.headers.get("Content-Type", "").partition(";")[0].strip().lower()
        ref = pushed_ref(body, content_type)
        matched = route.apps_for(ref)
        woken = _wake_each(wake, matched)
        if woken == len(matched):  # an app not running here yet may be woken by a redelivery
            delivered.add(delivery)
        return _reply(202, "accepted", _accepted(ref, woken, len(matched)))

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post(ROUTE_PREFIX + "{token:.*}", hook)
    app.router.add_get("/metrics", _metrics_endpoint(metrics_access))
    app.router.add_get("/healthz", healthz)
    return app


def make_runner(app: web.Application, *, idle_timeout: float = IDLE_TIMEOUT) -> web.AppRunner:
    """The runner to serve the webhook ``app`` with (no access log; ``setup()`` it, then add a site).

    aiohttp's keep-alive timer, started when a connection opens and again
    after each answer, closes a connection still waiting for a whole request
    head after ``idle_timeout`` seconds; its default (an hour) would let one
    client that sends half a request line hold a socket that long.

    Raises:
        ValueError: ``idle_timeout`` is not positive (0 would disable the timer).
    """
    if idle_timeout <= 0:
        raise ValueError("the idle timeout must be positive")
    return web.AppRunner(app, access_log=None, keepalive_timeout=idle_timeout)
