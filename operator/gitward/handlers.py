"""kopf wiring, and nothing else: every decision lives in ``gitward.reconcile``.

Each GitOpsApp gets a daemon: it reconciles, then sleeps for the app's
interval (plus up to 10% jitter, so apps do not poll in lockstep) or until
woken by a spec change, an on-demand request (the annotation
``gitward.dev/reconcile-requested-at``) or a push webhook. A refused commit
is not retried in a hot loop: the next poll finds the same head and skips.
A transient failure (a flaky git server) is retried with exponential backoff
up to the interval. The pipeline is synchronous and runs in a worker
thread, so the event loop stays free for watches and webhooks.

The operator owns its threads: reconciles run in one named pool
(``--reconcile-workers``), and each tenant may hold at most
``--tenant-concurrency`` of them at once, so one tenant's slow git server or
hostile repository waits for its own slots and never takes another
tenant's; /metrics token reviews have a small pool of their own; asyncio's
default pool (used by kopf for synchronous handlers) is sized and named
here too rather than left to the library default. Nothing a reconcile
raises can end its daemon: it becomes a condition and a backoff.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import kopf
from aiohttp import web

from gitward import logs, metrics, shards, webhook
from gitward.api import budgets, resources
from gitward.api.conditions import Condition, ConditionType, Reason, Status, merge_conditions
from gitward.api.refs import ObjectRef
from gitward.api.resources import Trigger, parse_duration
from gitward.apply.expected import Expectations
from gitward.apply.waiting import WatchedHealth
from gitward.errors import GitwardError, Stalled, Waiting
from gitward.fence.baseline import TENANT_SERVICE_ACCOUNT
from gitward.history.store import History
from gitward.images.shared import SharedImages
from gitward.kube import clients
from gitward.kube.cached import CachedReader
from gitward.kube.objects import APIError, Objects
from gitward.kube.reviews import MetricsAccess
from gitward.reconcile import app as reconcile
from gitward.reconcile.decide import next_delay, step_of
from gitward.reconcile.state import Services
from gitward.reconcile.status import Action, Outcome
from gitward.sharing import SharedResults
from gitward.source import git, urls
from gitward.source.shared import SharedSources

REQUEST_ANNOTATION = "gitward.dev/reconcile-requested-at"
GROUP, VERSION, PLURAL = resources.GROUP, resources.VERSION, resources.APP.plural
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


@dataclass
class Wakeup:
    """A pending request to reconcile an app now."""

    event: asyncio.Event = field(default_factory=asyncio.Event)
    trigger: Trigger = Trigger.POLL
    force: bool = False
    at: float = float("-inf")  # when the first pending request arrived (monotonic)


def _wakeup(memo: kopf.Memo, namespace: str, name: str) -> Wakeup:
    wakeups: dict[tuple[str, str], Wakeup] = memo.wakeups
    return wakeups.setdefault((namespace, name), Wakeup())


def wake(memo: kopf.Memo, namespace: str, name: str, trigger: Trigger, *, force: bool = False) -> bool:
    """Ask an app's daemon to reconcile now; False if no such app runs here.

    Only the on-demand annotation forces a new attempt at a head already
    attempted; a webhook or a spec change just looks now, so a push event
    for a commit that is already applied changes nothing and records nothing.
    """
    if (namespace, name) not in memo.wakeups:
        return False
    pending = _wakeup(memo, namespace, name)
    pending.trigger, pending.force = trigger, pending.force or force
    if not pending.event.is_set():
        pending.at = time.monotonic()
    pending.event.set()
    return True


def wake_for_drift(memo: kopf.Memo, namespace: str, name: str) -> None:
    """An object the app applied changed: check for drift now.

    Nothing new is expected from git, so the head checked within the interval will do (a
    webhook's or a request's trigger and freshness, if one is pending, are kept).
    """
    if (namespace, name) in memo.wakeups:
        _wakeup(memo, namespace, name).event.set()


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
        loop.call_soon_threadsafe(wake_for_drift, memo, namespace, name)

    memo.wakeups = {}
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

    access = MetricsAccess(operator.api) if config.metrics_auth else None

    async def metrics_access(token: str) -> bool:
        assert access is not None  # noqa: S101 - only wired when configured
        return await pools.lookup(functools.partial(access.allowed, token))

    app = webhook.make_app(
        metrics_access=metrics_access if access is not None else None,
        routes=memo.routes,
        wake=lambda ns, n: wake(memo, ns, n, Trigger.WEBHOOK),
    )
    runner = webhook.make_runner(app)
    await runner.setup()
    await web.TCPSite(runner, config.webhook_host, config.webhook_port).start()
    memo.webhook_runner = runner


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    """Stop the webhook server."""
    runner = getattr(memo, "webhook_runner", None)
    if runner is not None:
        await runner.cleanup()
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


def webhook_route(body: Mapping[str, Any], services: Services) -> tuple[bytes, str, str] | None:
    """The app's webhook route inputs (secret, repository, branch), or None if it has no usable one."""
    spec = body.get("spec") or {}
    secret_name = ((spec.get("webhook") or {}).get("secretRef") or {}).get("name")
    source = spec.get("source") or {}
    if not secret_name or not source.get("url") or not source.get("branch"):
        return None
    namespace = str((body.get("metadata") or {}).get("namespace") or "")
    try:
        repository = urls.parse(str(source["url"])).identity
        secret = services.reader.secret_data(namespace, str(secret_name)).get("token")
    except (GitwardError, APIError):
        return None
    return (secret, repository, str(source["branch"])) if secret else None


@kopf.on.event(GROUP, VERSION, resources.TENANT.plural)
def tenant_event(*, name: str, memo: kopf.Memo, **_: Any) -> None:
    """A GitOpsTenant was listed, changed or deleted: the cached copy is dropped."""
    reader = memo.services.reader
    if isinstance(reader, CachedReader):
        reader.tenant_changed(name)


def _owned(
    *, namespace: str | None, name: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> bool:
    """Whether this process reconciles the app: its shard owns it (every app, unsharded)."""
    shard: shards.Shard = memo.config.shard
    return shard.owns(namespace or "", name or "", labels)


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", when=_owned)
async def spec_changed(*, namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    """A spec change is reconciled now, not at the next poll."""
    wake(memo, namespace or "", name, Trigger.POLL)


@kopf.on.field(GROUP, VERSION, PLURAL, field=["metadata", "annotations", REQUEST_ANNOTATION], when=_owned)
async def requested(*, namespace: str | None, name: str, memo: kopf.Memo, new: Any, **_: Any) -> None:
    """On demand: setting the request annotation reconciles now."""
    if new:
        wake(memo, namespace or "", name, Trigger.POLL, force=True)


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=30, when=_owned)
async def run_app(
    *,
    namespace: str | None,
    name: str,
    body: kopf.Body,
    stopped: kopf.DaemonStopped,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """Reconcile the app, sleep, repeat, until the app is deleted or the operator stops."""
    namespace = namespace or ""
    pending = _wakeup(memo, namespace, name)
    services: Services = memo.services
    pools: Pools = memo.pools
    ref = ObjectRef(GROUP, VERSION, resources.APP.kind, namespace, name)
    failures = 0
    trigger, force, woken_at = Trigger.POLL, False, float("-inf")
    wrote = True  # the first attempt reads the app from the API; see below
    interval = _interval(dict(body))  # the last one read: kept while the app itself cannot be read
    unreachable_since = ""  # when an attempt first found the API server unreachable ("": it answered)
    log = logs.audit().bind(app=f"{namespace}/{name}")
    try:
        while not stopped:
            started = time.perf_counter()
            attempted_at = services.now()
            current: dict[str, Any] | None = None
            try:
                # kopf's body is a live view of the app, kept current by its watch: an attempt that
                # follows one that wrote nothing reads it for free (a push to a repository that a
                # thousand apps read wakes them all). After an attempt that wrote status, or one that
                # could not reach the API server (kopf's watch may still be catching up), the app is
                # read from the API, so a decision never rests on a status older than the
                # operator's own last write.
                if wrote or unreachable_since:
                    current = await pools.run(namespace, functools.partial(services.operator.get, ref))
                else:
                    # A snapshot, not a copy: kopf replaces the body it holds with each event's new
                    # dict and never changes one in place, and the pipeline only reads it.
                    current = dict(body)
                if current is None or (current.get("metadata") or {}).get("deletionTimestamp"):
                    return
                interval = _interval(current)
                # Woken (webhook, request, spec change): only a head checked since then will do.
                fresher_than = max(woken_at, time.monotonic() - interval)
                outcome = await _attempt(
                    memo,
                    current,
                    unreachable_since=unreachable_since,
                    trigger=trigger,
                    force=force,
                    fresher_than=fresher_than,
                )
            except (GitwardError, APIError) as error:  # status could not be written: retry with backoff
                log.warning("reconcile error", error=str(error))
                reason = error.reason if isinstance(error, GitwardError) else Reason.API_UNAVAILABLE
                outcome = Outcome(Action.DEPLOY, reason, ready=False, retry_after=15)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - the daemon outlives anything a reconcile raises
                _LOG.exception("reconcile of %s/%s failed", namespace, name)
                log.warning("reconcile error", error=type(error).__name__)
                reason = Reason.RECONCILE_ERROR
                outcome = Outcome(Action.DEPLOY, reason, ready=False, retry_after=30)
            _observe(namespace, name, outcome, time.perf_counter() - started)
            wrote = outcome.action is not Action.SKIP or bool(unreachable_since)
            unreachable_since = (unreachable_since or attempted_at) if _unreachable(outcome) else ""
            failures = failures + 1 if outcome.retry_after is not None else 0
            jitter = random.random()  # noqa: S311 - spreads polls apart, not cryptography
            delay = retry_delay(
                interval=interval, retry_after=outcome.retry_after, failures=failures, jitter=jitter
            )
            trigger, force, woken_at = await _sleep(pending, stopped, delay)
    finally:
        memo.wakeups.pop((namespace, name), None)
        memo.routes.forget((namespace, name))


def retry_delay(*, interval: float, retry_after: float | None, failures: int, jitter: float) -> float:
    """Seconds until the next attempt: :func:`next_delay`, with a retry's backoff jittered too.

    A poll is already spread over up to 10% past the interval. A retry is "equal jitter": between
    half and all of the backoff, so apps that failed together (an API server outage fails every app at
    once) do not all come back in the same second, and none later than its interval.
    """
    delay = next_delay(interval=interval, retry_after=retry_after, failures=failures, jitter=jitter)
    if retry_after is None:
        return delay
    return delay * (0.5 + 0.5 * jitter)


def _unreachable(outcome: Outcome) -> bool:
    """Whether an attempt ended as the API server did not answer (a skip only echoes the stored Ready)."""
    return outcome.reason is Reason.API_UNAVAILABLE and outcome.action not in (Action.SKIP, Action.HOLD)


def unknown_since(
    conditions: Sequence[Mapping[str, Any]], since: str, *, generation: int | None, now: str
) -> list[dict[str, object]]:
    """The app's conditions with Ready ``Unknown``, ``APIUnavailable``: unknown since ``since``."""
    message = (
        f"the Kubernetes API server did not answer from {since}; the app's state is unknown "
        "until a reconcile completes"
    )
    ready = Condition(ConditionType.READY, Status.UNKNOWN, Reason.API_UNAVAILABLE, message, generation)
    return merge_conditions(conditions, [ready], now=now)


def restored_ready(
    conditions: Sequence[Mapping[str, Any]],
    marker: Mapping[str, Any],
    replaced: Mapping[str, Any],
    *,
    now: str,
) -> list[dict[str, object]] | None:
    """The conditions with ``replaced`` back as Ready, if Ready is still ``marker``; else None.

    After an outage Ready was set ``Unknown`` (``marker``) before the attempt. An attempt that
    decided nothing changed (skip, hold) writes no condition, so the Ready it found before the
    outage (``replaced``) stands again, with a new transition time if its status differs. An
    attempt that wrote its own Ready, or a ``replaced`` that was itself ``APIUnavailable`` (it says
    nothing more), leaves the conditions as they are.
    """
    ready = next((c for c in conditions if c.get("type") == ConditionType.READY), None)
    if ready is None or any(ready.get(key) != marker.get(key) for key in ("status", "reason", "message")):
        return None
    if replaced.get("reason") == Reason.API_UNAVAILABLE:
        return None
    try:
        condition = Condition(
            ConditionType.READY,
            Status(str(replaced.get("status"))),
            Reason(str(replaced.get("reason"))),
            str(replaced.get("message") or ""),
            _int_or_none(replaced.get("observedGeneration")),
        )
    except ValueError:  # a Ready someone else wrote: nothing gitward can stand behind
        return None
    return merge_conditions(conditions, [condition], now=now)


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) else None


def _ready_of(app: Mapping[str, Any]) -> dict[str, Any] | None:
    for condition in (app.get("status") or {}).get("conditions") or ():
        if isinstance(condition, Mapping) and condition.get("type") == ConditionType.READY:
            return dict(condition)
    return None


async def _attempt(
    memo: kopf.Memo,
    app: dict[str, Any],
    *,
    unreachable_since: str,
    trigger: Trigger,
    force: bool,
    fresher_than: float,
) -> Outcome:
    """One attempt; the first after the API server did not answer writes Ready ``Unknown`` first.

    The previous attempt could not write the app's status, so nothing in it can be trusted to be
    current: Ready says so (``APIUnavailable``, since when) until this attempt completes and writes
    its own. An attempt that finds nothing new writes no condition; the Ready from before the outage
    is then put back.
    """
    if not unreachable_since:
        return await _reconcile(memo, app, trigger=trigger, force=force, fresher_than=fresher_than)
    services: Services = memo.services
    pools: Pools = memo.pools
    metadata = app.get("metadata") or {}
    ref = ObjectRef(
        GROUP,
        VERSION,
        resources.APP.kind,
        str(metadata.get("namespace") or ""),
        str(metadata.get("name") or ""),
    )
    replaced = _ready_of(app)
    conditions = unknown_since(
        list((app.get("status") or {}).get("conditions") or ()),
        unreachable_since,
        generation=_int_or_none(metadata.get("generation")),
        now=services.now(),
    )
    patch = {"status": {"conditions": conditions}}
    app = await pools.run(
        ref.namespace, functools.partial(services.operator.merge_patch, ref, patch, subresource="status")
    )
    marker = _ready_of(app) or {}
    outcome = await _reconcile(memo, app, trigger=trigger, force=force, fresher_than=fresher_than)
    if _unreachable(outcome) or replaced is None:
        return outcome

    def put_back() -> Outcome:
        stored = services.operator.get(ref)
        if stored is None:
            return outcome
        restored = restored_ready(
            list((stored.get("status") or {}).get("conditions") or ()), marker, replaced, now=services.now()
        )
        if restored is None:
            return outcome
        services.operator.merge_patch(ref, {"status": {"conditions": restored}}, subresource="status")
        return replace(
            outcome, reason=Reason(str(replaced["reason"])), ready=replaced.get("status") == Status.TRUE
        )

    return await pools.run(ref.namespace, put_back)


async def _reconcile(
    memo: kopf.Memo, app: dict[str, Any], *, trigger: Trigger, force: bool, fresher_than: float
) -> Outcome:
    """One attempt: the pipeline in the tenant's slots; a health wait parked on the event loop."""
    services: Services = memo.services
    pools: Pools = memo.pools
    routes: webhook.Routes = memo.routes
    metadata = app.get("metadata") or {}
    key = (str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))
    slots = f"tenant:{(app.get('spec') or {}).get('tenant') or ''}"

    def begin() -> tuple[tuple[bytes, str, str] | None, Outcome | reconcile.Parked]:
        # The webhook route's inputs are read in the same hop as the attempt (the secret comes from
        # a watched cache); the route table itself is the event loop's, so it is updated there.
        found = webhook_route(app, services)
        path = webhook.route_path(webhook.route_token(found[0], found[1])) if found else None
        started = reconcile.begin(
            app,
            services,
            trigger=trigger,
            force=force,
            fresher_than=fresher_than,
            park=True,
            status_extra={"webhookPath": path},
        )
        return found, started

    found, result = await pools.run(slots, begin)
    if found is None:
        routes.forget(key)
    else:
        secret, repository, branch = found
        routes.register(key, secret=secret, repository=repository, branch=branch)
    while isinstance(result, reconcile.Parked):
        # No thread and no tenant slot is held while the workloads become healthy.
        assert isinstance(services.health, WatchedHealth)  # noqa: S101 - wired in startup
        seen = await services.health.wait_async(result.targets, seconds=result.timeout)
        # Finishing (a record, an Event, a status patch) takes no tenant slot: behind a tenant's
        # queue of new attempts it would wait for all of them, and 1000 apps' health, seen at once,
        # would be recorded a minute late. The reconcile pool still bounds it.
        result = await pools.run(None, functools.partial(reconcile.resume, result, seen))
    return result


async def _sleep(pending: Wakeup, stopped: kopf.DaemonStopped, delay: float) -> tuple[Trigger, bool, float]:
    """Sleep until the delay passes, a wake-up arrives, or the daemon is stopped."""
    # The event is not cleared here: a wake-up that arrived while the reconcile ran is kept, and
    # answered at once, rather than lost until the next poll.
    waiter = asyncio.ensure_future(pending.event.wait())
    stopper = asyncio.ensure_future(stopped.wait())
    try:
        await asyncio.wait({waiter, stopper}, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        stopper.cancel()
    if pending.event.is_set():
        pending.event.clear()
        trigger, force, at = pending.trigger, pending.force, pending.at
        pending.trigger, pending.force, pending.at = Trigger.POLL, False, float("-inf")
        return trigger, force, at
    return Trigger.POLL, False, float("-inf")


def _interval(body: dict[str, Any]) -> float:
    try:
        return parse_duration(str(((body.get("spec") or {}).get("source") or {}).get("interval") or "1m"))
    except ValueError:
        return 60.0


def _observe(namespace: str, name: str, outcome: Outcome, seconds: float) -> None:
    metrics.RECONCILE_SECONDS.labels(namespace, name).observe(seconds)
    metrics.RECONCILES.labels(str(outcome.action), str(outcome.reason)).inc()
    verifying = step_of(outcome.reason) is ConditionType.SOURCE_VERIFIED
    if outcome.action is not Action.SKIP and verifying and outcome.reason is not Reason.SUCCEEDED:
        metrics.VERIFICATION_FAILURES.labels(str(outcome.reason)).inc()
    if outcome.ready and outcome.action is Action.DEPLOY:
        metrics.LAST_APPLIED.labels(namespace, name).set_to_current_time()


@kopf.on.delete(GROUP, VERSION, PLURAL, when=_owned)
def delete_app(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """The finalizer: with ``prune: true``, delete what the app owns, as its tenant, with the same checks."""
    try:
        reconcile.prune_on_delete(dict(body), memo.services)
    except GitwardError as error:
        raise to_kopf(error) from None


def to_kopf(error: GitwardError) -> Exception:
    """Map gitward's error kinds onto kopf's: stalled is permanent, waiting is retried after a delay."""
    if isinstance(error, Waiting):
        return kopf.TemporaryError(str(error), delay=error.retry_after)
    if isinstance(error, Stalled):
        return kopf.PermanentError(str(error))
    return kopf.TemporaryError(str(error), delay=30)
