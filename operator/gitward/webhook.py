"""The push-webhook receiver: "look now", authenticated, never trusted for content.

``POST /hooks/<namespace>/<app>`` with the app's shared secret (the key
``token`` of the Secret named by ``spec.webhook.secretRef``):

- GitHub: ``X-Hub-Signature-256: sha256=<HMAC-SHA256 of the body>``
- Gitea / Forgejo: ``X-Gitea-Signature: <HMAC-SHA256 hex>``
- GitLab: ``X-Gitlab-Token: <the secret>``
- generic: ``X-Signature-256: sha256=<HMAC-SHA256 of the body>``

Comparisons are constant-time; a missing or wrong signature is 401; a body
over 1 MiB is 413. The payload is never parsed for content: a valid call
only wakes the app's reconcile, which fetches and verifies like any poll.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gitward import metrics

MAX_BODY = 1024 * 1024
SecretLookup = Callable[[str, str], Awaitable[bytes | None]]
Wake = Callable[[str, str], bool]


def _hmac_hex(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def authentic(headers: Mapping[str, str], body: bytes, secret: bytes) -> bool:
    """Whether the request carries a valid signature (or token) for ``secret``. Pure."""
    expected = _hmac_hex(secret, body)
    for header in ("X-Hub-Signature-256", "X-Signature-256"):
        value = headers.get(header)
        if value is not None:
            return hmac.compare_digest(value.encode(), f"sha256={expected}".encode())
    gitea = headers.get("X-Gitea-Signature") or headers.get("X-Forgejo-Signature")
    if gitea is not None:
        return hmac.compare_digest(gitea.encode(), expected.encode())
    token = headers.get("X-Gitlab-Token")
    if token is not None:
        return hmac.compare_digest(token.encode(), secret)
    return False


def make_app(*, secret_for: SecretLookup, wake: Wake) -> web.Application:
    """The aiohttp application: the hook endpoint, /metrics and /healthz."""

    async def hook(request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["app"]
        if request.content_length is not None and request.content_length > MAX_BODY:
            metrics.WEBHOOKS.labels("too-large").inc()
            return web.Response(status=413, text="body too large\n")
        body = await request.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            metrics.WEBHOOKS.labels("too-large").inc()
            return web.Response(status=413, text="body too large\n")
        secret = await secret_for(namespace, name)
        if not secret or not authentic(request.headers, body, secret):
            metrics.WEBHOOKS.labels("unauthorized").inc()
            return web.Response(status=401, text="unauthorized\n")
        if not wake(namespace, name):
            metrics.WEBHOOKS.labels("unknown-app").inc()
            return web.Response(status=404, text="no such app\n")
        metrics.WEBHOOKS.labels("accepted").inc()
        return web.Response(status=202, text="reconcile requested\n")

    async def metrics_endpoint(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post("/hooks/{namespace}/{app}", hook)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/healthz", healthz)
    return app
