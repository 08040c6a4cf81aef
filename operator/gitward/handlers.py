"""kopf wiring, and nothing else: every decision lives in ``gitward.reconcile``.

kopf runs the process (login, startup, cleanup, the liveness endpoint) and
watches GitOpsTenants; the GitOpsApps are watched by one informer and
reconciled by :class:`gitward.runner.Runner`, which keeps a small slot per
app instead of a kopf daemon each (see that module for why and how).

The operator owns its threads: reconciles run in one named pool
(``--reconcile-workers``), and each tenant may hold at most
``--tenant-concurrency`` of them at once, so one tenant's slow git server or
hostile repository waits for its own slots and never takes another
tenant's; /metrics token reviews have a small pool of their own; asyncio's
default pool (used by kopf for synchronous handlers) is sized and named
here too rather than left to the library default.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import random
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import kopf
from aiohttp import web

from gitward import shards, webhook
from gitward.api import budgets, resources
from gitward.api.resources import Trigger
from gitward.apply.expected import Expectations
from gitward.apply.waiting import WatchedHealth
from gitward.fence.baseline import TENANT_SERVICE_ACCOUNT
from gitward.history.store import History
from gitward.images.shared import SharedImages
from gitward.kube import clients
from gitward.kube.cached import CachedReader
from gitward.kube.informer import Informer, Key
from gitward.kube.objects import Objects
from gitward.kube.reviews import MetricsAccess
from gitward.reconcile.state import Services
from gitward.runner import API_VERSION, Runner, compact
from gitward.sharing import SharedResults
from gitward.source import git
from gitward.source.shared import SharedSources

GROUP, VERSION = resources.GROUP, resources.VERSION
_T = TypeVar("_T")
_LOG = logging.getLogger(__name__)


@dataclass
class Config:
    """How this operator process runs; set by ``gitward run``, never by a resource."""

    namespace: str = "gitward-system"
    cache_dir: str = "/var/cache/gitward"
    kubeconfig: str | None = None
    git_timeout: float = 60.0
    # kopf's per-object workers at once. Its default (8, each lingering 5 s when idle) started about
    # one app a second; unbounded, 1000 apps at a cold start sent 2000 finalizer and annotation
    # patches at once and the API server shed them with 429s.
    worker_limit: int | None = 64
    webhook_host: str = "0.0.0.0"  # noqa: S104 - the operator's Service reaches it; a NetworkPolicy fences it
    webhook_port: int = 9090
    kustomize: tuple[str, ...] = ("kubectl", "kustomize")
    sops: tuple[str, ...] = ("sops",)
    service_account: str = ""  # "namespace/name" of the operator's own ServiceAccount, if it runs as one
    ceilings: budgets.Budgets = budgets.DEFAULT_CEILINGS
    reconcile_workers: int = 16
    tenant_concurrency: int = 8
    webhook_workers: int = 2
    metrics_auth: bool = False  # /metrics only for bearer tokens allowed to get /metrics (TokenReview + SAR)
    default_workers: int = 4
    shard: shards.Shard = field(default_factory=shards.Shard)  # which apps this process reconciles


class Pools:
    """The operator's own threads: one pool for reconciles, shared fairly between tenants."""

    def __init__(self, config: Config) -> None:
        self.reconcile = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.reconcile_workers, thread_name_prefix="gitward-reconcile"
        )
        self.webhook = concurrent.futures.ThreadPoolExecutor(
            max_workers=config.webhook_workers, thread_name_prefix="gitward-webhook"
        )
        self.tenant_concurrency = max(1, config.tenant_concurrency)
        self._tenants: dict[str, asyncio.Semaphore] = {}

    def tenant(self, name: str) -> asyncio.Semaphore:
        """The slots one tenant's reconciles share."""
        slots = self._tenants.get(name)
        if slots is None:
            slots = self._tenants[name] = asyncio.Semaphore(self.tenant_concurrency)
        return slots

    async def run(self, tenant: str | None, call: Callable[[], _T]) -> _T:
        """Run ``call`` in the reconcile pool within ``tenant``'s slots (``None``: the pool's bound only)."""
        loop = asyncio.get_running_loop()
        if tenant is None:
            return await loop.run_in_executor(self.reconcile, call)
        async with self.tenant(tenant):
            return await loop.run_in_executor(self.reconcile, call)

    async def lookup(self, call: Callable[[], _T]) -> _T:
        """Run a /metrics token review in its own small pool (webhook routes are looked up in memory)."""
        return await asyncio.get_running_loop().run_in_executor(self.webhook, call)

    def shutdown(self) -> None:
        """Stop taking work; running calls finish in their threads."""
        self.reconcile.shutdown(wait=False, cancel_futures=True)
        self.webhook.shutdown(wait=False, cancel_futures=True)


@kopf.on.login()
def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    """Log kopf in with the same credentials gitward's own clients use."""
    parts = clients.connection_parts(clients.load_configuration(memo.config.kubeconfig))
    return kopf.ConnectionInfo(**parts)  # type: ignore[arg-type]


class KopfBackoffs:
    """kopf's delays between retries of one API request: 1, 2, 4, 8, then 10 s, each jittered, without end.

    kopf retries a request that found no API server (or a 429, 5xx or 403) with these delays, and
    once they run out it gives up: by default after 54 s, and a watch that gives up on a 5xx is not
    started again (its task ends: "Watcher for ... has failed"), so the operator would stop seeing
    app changes. Without an end, each watch resumes within 10 s of the API server answering again;
    a patch that waits holds only its own object's worker. Jittered, so the streams of many
    replicas do not all come back in the same second. Iterated afresh for each request (not Sized:
    kopf reads that as unlimited).
    """

    cap = 10.0

    def __iter__(self) -> Iterator[float]:
        delay = 1.0
        while True:
            yield delay * (0.5 + 0.5 * random.random())  # noqa: S311 - spreads retries, not cryptography
            delay = min(self.cap, delay * 2)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Operator settings, the pipeline's services, and the webhook/metrics server."""
    config: Config = memo.config
    # Each shard has its own finalizer: kopf removes a finalizer from apps none of its handlers
    # match, so with one shared name two shards would take it off each other's apps for ever.
    settings.persistence.finalizer = config.shard.finalizer
    # kopf hides annotations under its storage prefix from change detection, so its own bookkeeping
    # lives under kopf.gitward.dev and the user-facing gitward.dev/* annotations stay visible.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf.gitward.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kopf.gitward.dev", key="last-handled-configuration"
    )
    # kopf's defaults pace new objects: 8 per-object workers, each lingering idle for 5 s, let about
    # one app a second start its daemon. The work runs in the operator's own pools, so workers are
    # cheap tasks here: more of them (Config.worker_limit) and idle ones leave at once.
    settings.batching.worker_limit = config.worker_limit
    settings.batching.idle_timeout = 0.5
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    # An API server outage is transient for kopf's own requests too: retried without end (watches
    # included), and an unanswered connect or request gives up in bounded time and is retried.
    settings.networking.error_backoffs = KopfBackoffs()
    settings.networking.connect_timeout = 10
    settings.networking.request_timeout = 60
    settings.posting.level = logging.WARNING
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(
            max_workers=config.default_workers, thread_name_prefix="gitward-kopf"
        )
    )
    pools = memo.pools = Pools(config)
    configuration = clients.load_configuration(config.kubeconfig)
    operator = Objects(clients.api_client(configuration))

    def as_tenant(namespace: str, account: str) -> Objects:
        return operator.impersonating(clients.ServiceAccountRef(namespace, account).username)

    memo.operator = operator
    memo.as_tenant = as_tenant
    loop = asyncio.get_running_loop()

    def drifting(namespace: str, name: str) -> None:
        # From a watch thread: an object the app applied changed, so the app checks for drift now.
        loop.call_soon_threadsafe(memo.runner.wake_for_drift, namespace, name)

    memo.routes = webhook.Routes()
    fetch_options = git.FetchOptions(cache_root=Path(config.cache_dir), timeout=config.git_timeout)
    memo.services = Services(
        reader=CachedReader(operator.api, operator_namespace=config.namespace),
        operator=operator,
        as_tenant=as_tenant,
        fetch_options=fetch_options,
        kustomize_command=config.kustomize,
        sops_command=config.sops,
        operator_account=clients.ServiceAccountRef(*config.service_account.split("/", 1))
        if config.service_account
        else None,
        ceilings=config.ceilings,
        sources=SharedSources(fetch_options),
        verifications=SharedResults(ttl=300.0, size=4096),
        trees=SharedResults(ttl=600.0, size=8),
        health=WatchedHealth(operator),
        fences={},
        history=History(),
        expectations=Expectations(
            lambda namespace: as_tenant(namespace, TENANT_SERVICE_ACCOUNT), changed=drifting
        ),
        images=SharedImages(),
    )

    app_runner = memo.runner = Runner(
        services=memo.services, pools=pools, routes=memo.routes, shard=config.shard
    )
    memo.runner_task = asyncio.ensure_future(app_runner.run())
    memo.runner_task.add_done_callback(_runner_ended)

    def app_changed(key: Key, body: dict[str, Any] | None) -> None:
        # From the informer's thread: the copy the runner keeps is compacted there, off the loop.
        if loop.is_closed():
            return  # the operator has stopped; nothing is scheduled any more
        with contextlib.suppress(RuntimeError):  # ... or the loop closed just now
            loop.call_soon_threadsafe(app_runner.changed, key, None if body is None else compact(body))

    memo.informer = Informer(operator, API_VERSION, resources.APP.kind, app_changed)
    memo.informer.start()

    access = MetricsAccess(operator.api) if config.metrics_auth else None

    async def metrics_access(token: str) -> bool:
        assert access is not None  # noqa: S101 - only wired when configured
        return await pools.lookup(functools.partial(access.allowed, token))

    app = webhook.make_app(
        metrics_access=metrics_access if access is not None else None,
        routes=memo.routes,
        wake=lambda ns, n: app_runner.wake(ns, n, Trigger.WEBHOOK),
    )
    runner = webhook.make_runner(app)
    await runner.setup()
    await web.TCPSite(runner, config.webhook_host, config.webhook_port).start()
    memo.webhook_runner = runner


def _runner_ended(task: asyncio.Task[None]) -> None:
    """The apps' schedule must not end while the operator runs: if it fails, the process stops.

    kopf would go on answering its liveness probe with no app reconciled; stopped, the process is
    restarted (by its Deployment) and the apps are taken up again.
    """
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        _LOG.critical("the apps' schedule failed; stopping the operator", exc_info=error)
        os.kill(os.getpid(), signal.SIGTERM)


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Stop the webhook server, the apps' schedule (attempts in flight may finish) and the watches."""
    runner = getattr(memo, "webhook_runner", None)
    if runner is not None:
        await runner.cleanup()
    informer = getattr(memo, "informer", None)
    if informer is not None:
        informer.stop()
    app_runner = getattr(memo, "runner", None)
    if app_runner is not None:
        await app_runner.stop()
        memo.runner_task.cancel()
    pools = getattr(memo, "pools", None)
    if pools is not None:
        pools.shutdown()
    services = getattr(memo, "services", None)
    if services is not None and isinstance(services.reader, CachedReader):
        services.reader.close()
    if services is not None and isinstance(services.health, WatchedHealth):
        services.health.close()
    if services is not None and services.expectations is not None:
        services.expectations.close()


@kopf.on.event(GROUP, VERSION, resources.TENANT.plural)
def tenant_event(*, name: str, memo: kopf.Memo, **_: Any) -> None:
    """A GitOpsTenant was listed, changed or deleted: the cached copy is dropped."""
    reader = memo.services.reader
    if isinstance(reader, CachedReader):
        reader.tenant_changed(name)
