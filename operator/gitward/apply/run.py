"""``apply.dry_run``, ``apply.apply``, ``apply.prune``, and waiting for health: writing as the tenant.

All writes go through an :class:`~gitward.kube.objects.Objects` whose client
impersonates the tenant's ServiceAccount, so the API server authorizes every
object against the tenant's Role. The order of events makes a commit all or
nothing:

1. ``dry_run``: the prune guard; ownership of every object (a GET per
   object for the few objects of a kind an app usually has, one LIST per
   kind past :data:`LIST_FROM`: a namespace holding a thousand apps'
   objects is never listed a thousand times); a server-side dry-run of every
   apply and every prune. Failures are collected for all objects and
   reported together. Nothing has been written.
2. ``apply``: server-side apply with field manager ``gitward`` in dependency
   tiers, objects within a tier concurrently; an object the dry-run shows
   would not change (and whose fields gitward already manages) is not
   written at all.
3. ``prune``: delete what left the inventory, workloads first, and only
   objects this app owns.

Each applied object carries the annotation ``gitward.dev/owner:
<namespace>/<app>``; an object that exists without it, or with another
owner, is an ``OwnershipConflict``, never taken over.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from gitward.api.conditions import Reason
from gitward.api.refs import ObjectRef
from gitward.api.resources import ChangeAction
from gitward.apply import drift, health, order
from gitward.apply.inventory import MANAGED_LABEL, OWNER_ANNOTATION, PruneGuard, check_guard, to_prune
from gitward.errors import GitwardError, Stalled, Waiting
from gitward.kube.objects import APIError, Objects, classify
from gitward.render.manifests import Manifest

FIELD_MANAGER = drift.FIELD_MANAGER
MAX_LISTED = 20
LIST_FROM = 8  # objects of one kind in one namespace from which one LIST is cheaper than GETs
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Change:
    """What happened to one object."""

    ref: ObjectRef
    action: ChangeAction

    def to_record(self) -> dict[str, str]:
        """The entry in a GitOpsRevision's ``changes``."""
        return {
            "group": self.ref.group,
            "kind": self.ref.kind,
            "namespace": self.ref.namespace,
            "name": self.ref.name,
            "action": str(self.action),
        }


@dataclass(frozen=True, slots=True)
class Plan:
    """A commit that passed the dry-run: what to write and what to prune."""

    bodies: tuple[Mapping[str, Any], ...]
    existing: Mapping[ObjectRef, Mapping[str, Any]]
    prune: tuple[ObjectRef, ...]
    origins: Mapping[ObjectRef, str] = field(default_factory=dict)
    would: Mapping[ObjectRef, Mapping[str, Any]] = field(default_factory=dict)  # the dry-run's answers
    leave: frozenset[ObjectRef] = frozenset()  # kept in the inventory, not written (drift left alone)

    def action_of(self, body: Mapping[str, Any]) -> str:
        """``create``, ``update`` or ``unchanged``: what applying ``body`` would do, from the dry-run."""
        key = identity(ObjectRef.of(body))
        live = self.existing.get(key)
        if live is None:
            return "create"
        return "unchanged" if drift.comparable(self.would.get(key)) == drift.comparable(live) else "update"

    @property
    def inventory(self) -> tuple[ObjectRef, ...]:
        """The app's inventory once the plan is applied."""
        return tuple(ObjectRef.of(body) for body in self.bodies)


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What an apply changed, and the app's new inventory."""

    changes: tuple[Change, ...]
    inventory: tuple[ObjectRef, ...]
    # The generation each object has after the apply: its health counts only once its controller
    # has observed at least that one (a cached status from before the apply says nothing).
    generations: Mapping[ObjectRef, int] = field(default_factory=dict)
    # What gitward's field manager owns of each object after the apply: drift is a change of it.
    fingerprints: Mapping[ObjectRef, drift.Fingerprint] = field(default_factory=dict)
    left: frozenset[ObjectRef] = frozenset()  # objects the user keeps (gitward.dev/reconcile: disabled)


def identity(ref: ObjectRef) -> ObjectRef:
    """An object's identity whatever the version it is served at (the key of a plan's maps)."""
    return ObjectRef(ref.group, "", ref.kind, ref.namespace, ref.name)


def labelled(manifest: Manifest, owner: str) -> dict[str, Any]:
    """The object as gitward applies it: with its owner annotation and managed-by label."""
    obj = copy.deepcopy(dict(manifest.obj))
    metadata = dict(obj.get("metadata") or {})
    metadata["annotations"] = {**(metadata.get("annotations") or {}), OWNER_ANNOTATION: owner}
    metadata["labels"] = {**(metadata.get("labels") or {}), MANAGED_LABEL: "gitward"}
    obj["metadata"] = metadata
    return obj


def _summarize(failures: Sequence[GitwardError], verb: str) -> GitwardError:
    """One error for all of them: transient if any is (the verdict is not final), else a refusal."""
    shown = "; ".join(f.message for f in failures[:MAX_LISTED])
    more = f"; and {len(failures) - MAX_LISTED} more" if len(failures) > MAX_LISTED else ""
    message = f"{len(failures)} object(s) {verb}: {shown}{more}"
    transient = [f for f in failures if isinstance(f, Waiting)]
    if transient:
        return Waiting(transient[0].reason, message, retry_after=min(f.retry_after for f in transient))
    return Stalled(failures[0].reason, message)


_POOL: list[ThreadPoolExecutor] = []
_POOL_LOCK = threading.Lock()


def _requests_pool(workers: int) -> ThreadPoolExecutor:
    """One process-wide pool for an app's concurrent requests (a pool per call meant threads per call)."""
    with _POOL_LOCK:
        if not _POOL:
            _POOL.append(ThreadPoolExecutor(max_workers=max(workers, 16), thread_name_prefix="gitward-apply"))
        return _POOL[0]


class Applier:
    """Applies one app's objects through a tenant-impersonating client."""

    def __init__(self, objects: Objects, *, owner: str, workers: int = 8, force: bool = False) -> None:
        self.objects = objects
        self.owner = owner
        self.workers = workers
        # Whether fields another field manager owns are taken over (spec.force; a drift correction
        # takes back what gitward had applied). Without it the API server's conflict is FieldConflict.
        self.force = force

    def _parallel(self, items: Sequence[T], action: Callable[[T], R]) -> list[tuple[T, R | GitwardError]]:
        def attempt(item: T) -> tuple[T, R | GitwardError]:
            try:
                return item, action(item)
            except GitwardError as error:
                return item, error

        if len(items) <= 1 or self.workers <= 1:
            return [attempt(item) for item in items]
        return list(_requests_pool(self.workers).map(attempt, items))

    def _existing(self, refs: Sequence[ObjectRef]) -> dict[ObjectRef, Mapping[str, Any]]:
        found: dict[ObjectRef, Mapping[str, Any]] = {}
        groups: dict[tuple[str, str, str], list[ObjectRef]] = {}
        for ref in refs:
            groups.setdefault((ref.api_version, ref.kind, ref.namespace), []).append(ref)
        singles: list[ObjectRef] = []
        for (api_version, kind, namespace), members in sorted(groups.items()):
            if len(members) < LIST_FROM:
                singles.extend(members)
                continue
            try:
                items = self.objects.list(api_version, kind, namespace)
            except APIError as error:
                raise classify(
                    error, ref=ObjectRef(*_split(api_version), kind, namespace, "*"), dry_run=True
                ) from None
            for item in items:
                found[identity(ObjectRef.of(item))] = item

        def get(ref: ObjectRef) -> Mapping[str, Any] | None:
            try:
                return self.objects.get(ref)
            except APIError as error:
                raise classify(error, ref=ref, dry_run=True) from None

        for ref, live in self._parallel(singles, get):
            if isinstance(live, GitwardError):
                raise live
            if live is not None:
                found[identity(ref)] = live
        return found

    def _owner_problem(self, ref: ObjectRef, live: Mapping[str, Any] | None) -> GitwardError | None:
        if live is None:
            return None
        owner = ((live.get("metadata") or {}).get("annotations") or {}).get(OWNER_ANNOTATION)
        if owner == self.owner:
            return None
        who = f"the app {owner}" if owner else "something other than gitward"
        return Stalled(
            Reason.OWNERSHIP_CONFLICT, f"{ref} already exists and belongs to {who}; it is not taken over"
        )

    def dry_run(
        self,
        manifests: Sequence[Manifest],
        *,
        previous: Sequence[ObjectRef] = (),
        guard: PruneGuard | None = None,
    ) -> Plan:
        """Check everything the commit would do, writing nothing; raise listing every failure."""
        bodies = [labelled(m, self.owner) for m in manifests]
        refs = [ObjectRef.of(body) for body in bodies]
        origins = {identity(ref): m.origin for ref, m in zip(refs, manifests, strict=True)}
        check_guard(previous, refs, guard or PruneGuard())
        pruned = to_prune(previous, refs)
        existing = self._existing([*refs, *pruned])
        # Fields the user told gitward to leave alone keep their live values on an object that exists.
        bodies = [
            drift.keep_live(body, live)
            if (live := existing.get(identity(ref))) is not None and drift.ignored_fields(body, live)
            else body
            for body, ref in zip(bodies, refs, strict=True)
        ]
        failures: list[GitwardError] = [
            problem for ref in refs if (problem := self._owner_problem(ref, existing.get(identity(ref))))
        ]
        prunable = []
        for ref in pruned:
            live = existing.get(identity(ref))
            if live is not None and self._owner_problem(ref, live) is None:
                prunable.append(ref)

        def try_apply(body: Mapping[str, Any]) -> Mapping[str, Any]:
            ref = ObjectRef.of(body)
            try:
                return self.objects.apply(body, field_manager=FIELD_MANAGER, dry_run=True, force=self.force)
            except APIError as error:
                raise _with_origin(
                    classify(error, ref=ref, dry_run=True), origins.get(identity(ref))
                ) from None

        def try_delete(ref: ObjectRef) -> None:
            try:
                self.objects.delete(ref, dry_run=True)
            except APIError as error:
                raise classify(error, ref=ref, dry_run=True) from None

        applied = self._parallel(bodies, try_apply)
        failures.extend(r for _, r in applied if isinstance(r, GitwardError))
        would = {identity(ObjectRef.of(body)): r for body, r in applied if not isinstance(r, GitwardError)}
        failures.extend(r for _, r in self._parallel(prunable, try_delete) if isinstance(r, GitwardError))
        if failures:
            failures.sort(key=lambda f: f.reason != Reason.APPLY_FORBIDDEN)
            raise _summarize(failures, "refused by the dry-run")
        return Plan(
            bodies=tuple(bodies), existing=existing, prune=tuple(prunable), origins=origins, would=would
        )

    def apply(self, plan: Plan) -> ApplyResult:
        """Write the plan's objects tier by tier, then prune; return what changed."""
        by_ref = {ObjectRef.of(body): body for body in plan.bodies}
        tiers: dict[int, list[ObjectRef]] = {}
        for ref in by_ref:
            tiers.setdefault(order.tier(ref.kind), []).append(ref)
        changes: list[Change] = []

        generations: dict[ObjectRef, int] = {}
        fingerprints: dict[ObjectRef, drift.Fingerprint] = {}

        def write(ref: ObjectRef) -> Change:
            before = plan.existing.get(identity(ref))
            if identity(ref) in plan.leave:
                if before is not None:
                    generations[ref] = _generation(before)
                    fingerprints[ref] = drift.fingerprint(before)
                return Change(ref, ChangeAction.UNCHANGED)  # the user's: not written, whatever it is
            if before is not None and _settled(before, plan.would.get(identity(ref))):
                generations[ref] = _generation(before)
                fingerprints[ref] = drift.fingerprint(before)
                return Change(ref, ChangeAction.UNCHANGED)  # nothing to write: no request at all
            try:
                stored = self.objects.apply(by_ref[ref], field_manager=FIELD_MANAGER, force=self.force)
            except APIError as error:
                raise _with_origin(
                    classify(error, ref=ref, dry_run=False), plan.origins.get(identity(ref))
                ) from None
            generations[ref] = _generation(stored)
            fingerprints[ref] = drift.fingerprint(stored)
            if before is None:
                return Change(ref, ChangeAction.CREATED)
            old_version = (before.get("metadata") or {}).get("resourceVersion")
            new_version = (stored.get("metadata") or {}).get("resourceVersion")
            return Change(ref, ChangeAction.UNCHANGED if old_version == new_version else ChangeAction.UPDATED)

        for tier in sorted(tiers):
            results = self._parallel(sorted(tiers[tier], key=str), write)
            failures = [r for _, r in results if isinstance(r, GitwardError)]
            if failures:
                raise _summarize(failures, "failed to apply")
            changes.extend(r for _, r in results if isinstance(r, Change))
        changes.extend(self.prune(plan.prune))
        return ApplyResult(
            changes=tuple(changes),
            inventory=plan.inventory,
            generations=generations,
            fingerprints=fingerprints,
            left=plan.leave,
        )

    def prune_owned(self, refs: Sequence[ObjectRef]) -> list[Change]:
        """Delete those of ``refs`` that exist and belong to this app (an app being deleted); nothing else."""
        existing = self._existing(refs)
        owned = [
            ref
            for ref in refs
            if (live := existing.get(identity(ref))) is not None and self._owner_problem(ref, live) is None
        ]
        return self.prune(owned)

    def prune(self, refs: Sequence[ObjectRef]) -> list[Change]:
        """Delete objects that left the inventory, workloads before what they use."""
        changes = []
        for index in order.prune_order([r.kind for r in refs]):
            ref = refs[index]
            try:
                if self.objects.delete(ref):
                    changes.append(Change(ref, ChangeAction.PRUNED))
            except APIError as error:
                raise classify(error, ref=ref, dry_run=False) from None
        return changes


def _manages(live: Mapping[str, Any]) -> bool:
    """Whether gitward's field manager already owns fields of ``live`` through an apply."""
    entries = (live.get("metadata") or {}).get("managedFields") or ()
    return any(
        isinstance(e, Mapping) and e.get("manager") == FIELD_MANAGER and e.get("operation") == "Apply"
        for e in entries
    )


def _settled(live: Mapping[str, Any], would: Mapping[str, Any] | None) -> bool:
    """Whether applying would change nothing: the dry-run's answer is the live object, already ours."""
    return would is not None and _manages(live) and drift.comparable(would) == drift.comparable(live)


def _generation(body: Mapping[str, Any]) -> int:
    return int((body.get("metadata") or {}).get("generation") or 0)


def _split(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def _with_origin(error: GitwardError, origin: str | None) -> GitwardError:
    if origin:
        error.message = f"{error.message} (from {origin})"
    return error


class HealthWaiter(Protocol):
    """Waits until workloads are healthy: by watch in the operator (:mod:`gitward.apply.waiting`)."""

    def wait(
        self, targets: Mapping[ObjectRef, int], *, timeout: float
    ) -> dict[ObjectRef, health.HealthStatus]:
        """Each target's health once all are healthy at (at least) their generation, or at ``timeout``."""
        ...


def observed(body: Mapping[str, Any] | None, generation: int) -> health.HealthStatus:
    """The health of ``body``, unless it is older than the ``generation`` just applied."""
    if body is not None and _generation(body) < generation:
        return health.HealthStatus(health.Health.PROGRESSING, "the applied spec has not been seen yet")
    return health.assess(body)


def unhealthy(statuses: Mapping[ObjectRef, health.HealthStatus], timeout: float) -> Stalled | None:
    """``HealthTimeout`` naming what is not healthy, or None if everything is."""
    pending = {ref: s for ref, s in statuses.items() if s.health is not health.Health.HEALTHY}
    if not pending:
        return None
    detail = "; ".join(f"{ref}: {s.message}" for ref, s in list(pending.items())[:MAX_LISTED])
    return Stalled(Reason.HEALTH_TIMEOUT, f"not healthy after {timeout:g}s: {detail}")


def workloads(result: ApplyResult) -> dict[ObjectRef, int]:
    """The applied objects whose health is worth waiting for, with the generation each must reach."""
    return {
        ref: result.generations.get(ref, 0)
        for ref in result.inventory
        if health.needs_waiting(ref.group, ref.kind) and identity(ref) not in result.left
    }


def wait_healthy(
    objects: Objects,
    targets: Mapping[ObjectRef, int],
    *,
    timeout: float,
    interval: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[ObjectRef, health.HealthStatus]:
    """Poll ``targets`` until all are healthy or ``timeout`` passes (the CLI's way; the operator watches)."""
    deadline = clock() + timeout
    while True:
        statuses = {}
        for ref, generation in targets.items():
            try:
                statuses[ref] = observed(objects.get(ref), generation)
            except APIError as error:
                statuses[ref] = health.HealthStatus(health.Health.MISSING, error.message)
        if health.HealthStatus.settled(statuses.values()) or clock() >= deadline:
            return statuses
        sleep(interval)


@dataclass(frozen=True, slots=True)
class PollingHealth:
    """A :class:`HealthWaiter` that polls with GETs: for the CLI and tests, not for the operator."""

    objects: Objects

    def wait(
        self, targets: Mapping[ObjectRef, int], *, timeout: float
    ) -> dict[ObjectRef, health.HealthStatus]:
        """See :class:`HealthWaiter`."""
        return wait_healthy(self.objects, targets, timeout=timeout)
