"""The typed state of one reconcile: what the operator wired in, what the app says, what the attempt found.

``Services`` is wired once by the operator (or the CLI). ``Run`` is one
attempt, with the app's status parsed once (``reconcile.status``; it is
written once, at the end of the attempt, by :mod:`gitward.reconcile.app`).
The steps of :mod:`gitward.reconcile.steps` fill it in order
(resolved app, branch head, checkout, verified commit, rendered objects,
placed objects, plan, apply result, health), so every later step and the
final record read typed values, never a raw body.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gitward.api.budgets import DEFAULT_CEILINGS, Budgets
from gitward.api.refs import ObjectRef
from gitward.api.resources import Trigger
from gitward.apply import health
from gitward.apply.drift import Drifted
from gitward.apply.expected import Expectations
from gitward.apply.health import HealthStatus
from gitward.apply.run import ApplyResult, HealthWaiter, Plan
from gitward.apply.testjobs import TestResult
from gitward.history.store import History
from gitward.images.shared import SharedImages
from gitward.kube.clients import ServiceAccountRef
from gitward.kube.objects import Objects
from gitward.reconcile.resolve import Reader, ResolvedApp
from gitward.reconcile.status import AppStatus, Step
from gitward.render.decrypt import DEFAULT_SOPS
from gitward.render.limits import Limits
from gitward.render.load import DEFAULT_KUSTOMIZE, Rendered
from gitward.render.manifests import Manifest
from gitward.sharing import SharedResults
from gitward.source import git
from gitward.source.shared import SharedSources
from gitward.trust.verify import VerifiedSource

if TYPE_CHECKING:
    from gitward.images.verify import VerifiedImage


def utc_now() -> str:
    """The time as Kubernetes writes it."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Services:
    """Everything the pipeline needs from the outside world, wired once by the operator."""

    reader: Reader
    operator: Objects
    as_tenant: Callable[[str, str], Objects]
    fetch_options: git.FetchOptions
    kustomize_command: Sequence[str] = DEFAULT_KUSTOMIZE
    sops_command: Sequence[str] = DEFAULT_SOPS
    operator_account: ServiceAccountRef | None = (
        None  # the operator's own ServiceAccount, when it runs as one
    )
    now: Callable[[], str] = field(default=utc_now)
    ceilings: Budgets = DEFAULT_CEILINGS  # what no tenant's spec.limits may exceed
    # Shared between the apps of one operator: one remote check and fetch per source, one
    # verification per (commit, baseline, keys). Without them (the CLI) each run does its own.
    sources: SharedSources | None = None
    verifications: SharedResults[VerifiedSource] | None = None
    trees: SharedResults[Any] | None = None  # commit trees and their indexes, built once per commit
    # How health is waited for: by watch in the operator; by polling when absent (the CLI).
    health: HealthWaiter | None = None
    # Per tenant namespace, the digest of the fence this process last wrote there (fence.ensure).
    fences: dict[str, str] | None = None
    history: History | None = None  # each app's records as this process last read or wrote them
    # What each app applied, as fingerprints, with watches of the live objects: the drift check.
    expectations: Expectations | None = None
    # The image gate: signature verdicts by (repository, digest, keys), and one registry client per
    # tenant's settings (credentials, CA), each with its keep-alive connections. Without them (the
    # CLI) each run makes its own.
    images: SharedImages | None = None


@dataclass
class Run:
    """One attempt at one app: filled in by the steps, in order."""

    app: Mapping[str, Any]
    services: Services
    trigger: Trigger = Trigger.POLL
    force: bool = False
    started: str = ""
    # A shared source's head is reused if its remote check started after this (monotonic seconds):
    # a poll accepts one checked within its interval, a webhook only one checked after it arrived.
    fresher_than: float = float("inf")
    park: bool = False  # stop after apply and hand the health wait to the caller (reconcile.app.Parked)
    status_extra: dict[str, Any] = field(default_factory=dict)  # status fields the caller owns
    # Filled by the steps, in pipeline order
    resolved: ResolvedApp | None = None
    head: str = ""
    checkout: git.Checkout | None = None
    repo: git.Repository | None = None
    verified: VerifiedSource | None = None
    rendered: Rendered | None = None
    placed: Sequence[Manifest] = ()
    plan: Plan | None = None
    result: ApplyResult | None = None
    health: Mapping[ObjectRef, health.HealthStatus] = field(default_factory=dict)
    # What the operator's watch saw while the run was parked outside its worker (see reconcile.app):
    # the health step then judges that instead of waiting itself.
    health_seen: Mapping[ObjectRef, HealthStatus] | None = None
    notes: Sequence[str] = ()  # what policy left out or ignored (manifests written for other tools)
    # The commit's test Jobs (gitward.dev/hook: test), run after health; and what they did.
    tests: Sequence[Manifest] = ()
    tests_seen: Mapping[ObjectRef, HealthStatus] | None = None
    test_results: Sequence[TestResult] = ()
    # The commit's Secret values (in memory only): masked out of anything a record keeps.
    secrets: frozenset[str] = frozenset()
    revealed: frozenset[str] = frozenset()  # every value SOPS decrypted, whatever the object's kind
    images: Sequence[VerifiedImage] = ()  # each image, the digest applied, and the key that signed it
    step: Step | None = None  # the step that ran last (the one that raised, on failure)
    # How this run differs from a plain deploy of the branch head
    target: str = ""  # a commit to roll back to, instead of the head
    preview: bool = False  # gitward diff: write nothing, not even the fence
    limits: Limits | None = None  # render limits instead of the tenant's budgets (tests)
    previous: Sequence[ObjectRef] | None = None  # inventory to prune from, instead of the status's
    # A drift correction: fields gitward applied and someone else changed are taken back (force).
    reclaim: bool = False
    drift: Sequence[Drifted] = ()  # what had drifted, for the correction's record
    # The fast-forward baseline: the last commit the operator applied, from its own records (the
    # status is a view for people, not trust state). Empty on a first apply.
    baseline: str = ""

    def __post_init__(self) -> None:
        metadata = self.app.get("metadata") or {}
        self.namespace = str(metadata.get("namespace", ""))
        self.name = str(metadata.get("name", ""))
        self.uid = str(metadata.get("uid", ""))
        self.generation = int(metadata.get("generation") or 0)
        self.status = AppStatus.parse(self.app.get("status"))
        self.ref = ObjectRef("gitward.dev", "v1alpha1", "GitOpsApp", self.namespace, self.name)
        self.started = self.started or self.services.now()

    @property
    def spec(self) -> Mapping[str, Any]:
        """The raw spec (parsed and checked by the resolve step)."""
        return self.app.get("spec") or {}

    @property
    def previous_inventory(self) -> Sequence[ObjectRef]:
        """What the app owned before this attempt: what pruning compares against.

        With what an interrupted apply may have added (``status.applying``): if it left git, it
        is pruned like anything else.
        """
        if self.previous is not None:
            return self.previous
        pending = self.status.applying.inventory if self.status.applying else ()
        return tuple(dict.fromkeys((*self.status.inventory, *pending)))

    def require_resolved(self) -> ResolvedApp:
        """The resolved app; the resolve step runs first, so later steps always have it."""
        if self.resolved is None:
            raise RuntimeError("the resolve step has not run")
        return self.resolved
