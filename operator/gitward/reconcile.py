"""The reconcile pipeline, as a short list of steps (see DESIGN.md).

Each step is a function with a typed result that fails with a typed error
carrying a condition reason; none of them knows about kopf.

    resolved, verified = verified_source(...)   # tenants.resolve, source.fetch, trust.verify
    deployed = deploy(resolved, verified, ...)  # render.load, policy.check, tenancy.ensure_namespace,
                                                # apply.dry_run, apply.apply (+ prune), apply.wait_healthy
    # history.record and the status write: gitward.controller, per app

The tenant's fence is ensured before the dry-run, not after: the dry-run
runs as the fence's ServiceAccount, so that account and its Role must exist
first. The fence comes from the tenant's spec, never from the commit, so
the rule "nothing from a commit is written before every object passed
policy and dry-run" still holds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gitward.apply import health
from gitward.apply.inventory import PruneGuard, owner_of
from gitward.apply.run import Applier, ApplyResult, wait_healthy
from gitward.errors import Stalled
from gitward.kube.clients import ServiceAccountRef
from gitward.kube.objects import ObjectRef, Objects
from gitward.policy.check import check
from gitward.render.limits import Limits
from gitward.render.load import DEFAULT_KUSTOMIZE, Rendered, load
from gitward.source import git
from gitward.tenancy.baseline import TENANT_SERVICE_ACCOUNT
from gitward.tenancy.ensure import ensure_namespace
from gitward.tenants.resolve import Reader, ResolvedApp, resolve
from gitward.trust.verify import VerifiedSource, verify


def verified_source(
    app: Mapping[str, Any],
    *,
    reader: Reader,
    fetch_options: git.FetchOptions,
    last_applied: str | None,
) -> tuple[ResolvedApp, VerifiedSource]:
    """Resolve the tenant policy, fetch the allowed branch, verify its new commits."""
    resolved = resolve(app, reader=reader, allow_file=fetch_options.allow_file_transport)
    checkout = git.fetch(
        resolved.source,
        app_uid=resolved.uid,
        credentials=resolved.credentials,
        options=fetch_options,
        budgets=resolved.budgets,
    )
    repo = git.Repository(checkout.repo, options=fetch_options, budgets=resolved.budgets)
    verified = verify(checkout, repo, last_applied=last_applied, settings=resolved.trust, keys=resolved.keys)
    return resolved, verified


@dataclass(frozen=True, slots=True)
class Deployed:
    """A commit that was rendered, allowed, applied and found healthy."""

    rendered: Rendered
    result: ApplyResult
    health: Mapping[ObjectRef, health.HealthStatus]
    unhealthy: Stalled | None = None  # applied, but not healthy within healthTimeout


def deploy(
    resolved: ResolvedApp,
    verified: VerifiedSource,
    *,
    operator: Objects,
    as_tenant: Callable[[str, str], Objects],
    fetch_options: git.FetchOptions,
    previous_inventory: Sequence[ObjectRef] = (),
    limits: Limits | None = None,
    kustomize_command: Sequence[str] = DEFAULT_KUSTOMIZE,
    wait: bool = True,
    operator_account: ServiceAccountRef | None = None,
) -> Deployed:
    """Render, check, fence, dry-run, apply and wait; raise at the first step that refuses."""
    repo = git.Repository(verified.checkout.repo, options=fetch_options, budgets=resolved.budgets)
    rendered = load(
        repo,
        verified.commit,
        resolved.spec.source.path,
        limits=limits or Limits.from_budgets(resolved.budgets),
        kustomize_command=kustomize_command,
    )
    namespace = resolved.source.target_namespace
    placed = check(rendered.manifests, tenant=resolved.tenant, namespace=namespace)
    ensure_namespace(
        operator,
        namespace,
        tenant_name=resolved.tenant_name,
        tenant=resolved.tenant,
        operator_account=operator_account,
    )
    applier = Applier(
        as_tenant(namespace, TENANT_SERVICE_ACCOUNT), owner=owner_of(resolved.namespace, resolved.name)
    )
    guard_spec = resolved.spec.prune_guard
    guard = PruneGuard(allow_empty=guard_spec.allow_empty, max_share=guard_spec.max_share_percent / 100)
    previous = previous_inventory if resolved.spec.prune else ()
    plan = applier.dry_run(placed, previous=previous, guard=guard)
    result = applier.apply(plan)
    statuses: Mapping[ObjectRef, health.HealthStatus] = {}
    if wait:
        try:
            statuses = wait_healthy(operator, result.inventory, timeout=resolved.spec.health_timeout_seconds)
        except Stalled as unhealthy:
            return Deployed(rendered=rendered, result=result, health=statuses, unhealthy=unhealthy)
    return Deployed(rendered=rendered, result=result, health=statuses)
