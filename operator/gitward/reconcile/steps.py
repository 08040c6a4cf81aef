"""The reconcile pipeline, in order: each step reads the :class:`Run` and fills in what it produced.

    resolve   tenant policy, keys, credentials, budgets        (reconcile.resolve)
    head      the allowed branch's head, one ls-remote         (source.git)
    fetch     the head (or a rollback target) within budgets   (source.git)
    trust     signatures of every new commit, fast-forward     (trust.verify)
    render    YAML / kustomize on the verified tree            (render.load)
    policy    namespaces, kinds, fields, pod security, secrets (policy.check)
    dry_run   the tenant's fence, then every object as tenant  (fence, apply.run)
    apply     server-side apply as the tenant, then prune      (apply.run)
    health    every workload healthy within healthTimeout      (apply.run)
    (tests)   the commit's test Jobs, after health               (apply.testjobs; run by reconcile.app)

A step fails by raising a :class:`~gitward.errors.GitwardError` whose type
says whether to retry and whose reason names the cause; nothing from a
commit is written before every object passed policy and dry-run. The
fence is ensured just before the dry-run (which runs as the fence's
ServiceAccount); it comes from the tenant's spec, never from the commit.

:func:`run_steps` runs a slice of the pipeline: the operator runs
``resolve`` and ``head``, decides (``reconcile.decide``), then runs the
rest; ``gitward verify`` stops after ``trust`` and ``gitward diff`` after
``dry_run`` (``preview``: the fence is not written), on these very steps.
Recording and the status write are not steps: ``reconcile.app`` does both
once, at the end of the attempt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from gitward.api.conditions import Reason
from gitward.api.refs import ObjectRef
from gitward.api.resources import ImagePolicy, VerifyMode
from gitward.apply import testjobs
from gitward.apply.inventory import PruneGuard, owner_of
from gitward.apply.run import Applier, PollingHealth, unhealthy, workloads
from gitward.apply.testjobs import TestJobs
from gitward.errors import GitwardError, Stalled, Waiting
from gitward.fence.baseline import TENANT_SERVICE_ACCOUNT
from gitward.fence.ensure import ensure_namespace
from gitward.history import store
from gitward.images.policy import check_policy
from gitward.images.refs import image_fields, replace_images
from gitward.images.shared import SharedImages
from gitward.kube.objects import APIError, classify
from gitward.policy import foreign
from gitward.policy.check import check
from gitward.reconcile.resolve import resolve as resolve_app
from gitward.reconcile.state import Run
from gitward.reconcile.status import Applying, Step
from gitward.render import decrypt
from gitward.render.limits import Limits
from gitward.render.load import Rendered, load
from gitward.render.manifests import Manifest
from gitward.source import git
from gitward.source.shared import SourceKey
from gitward.trust.verify import TrustSettings, VerifiedSource, verify

if TYPE_CHECKING:
    from gitward.images.clients import RegistryClients
    from gitward.images.keys import TrustedImageKeys
    from gitward.images.verify import RegistryReader


def resolve(run: Run) -> None:
    """The app's spec parsed once and its tenant resolved: policy, keys, credentials, budgets."""
    services = run.services
    run.resolved = resolve_app(
        run.app,
        reader=services.reader,
        allow_file=services.fetch_options.allow_file_transport,
        ceilings=services.ceilings,
    )


def _source_key(run: Run) -> SourceKey:
    resolved = run.require_resolved()
    return SourceKey.of(resolved.tenant_name, resolved.source, resolved.credentials)


def head(run: Run) -> None:
    """The head of the allowed branch, from one ``ls-remote`` (shared by the apps that read the source)."""
    resolved = run.require_resolved()
    sources = run.services.sources
    if sources is not None:
        run.head = sources.head(
            _source_key(run),
            resolved.source,
            credentials=resolved.credentials,
            budgets=resolved.budgets,
            fresher_than=run.fresher_than,
        )
        return
    run.head = git.remote_head(
        resolved.source,
        credentials=resolved.credentials,
        options=run.services.fetch_options,
        budgets=resolved.budgets,
    )


def fetch(run: Run) -> None:
    """The head, into the source's cache repository (the app's own, without sharing), within budgets."""
    resolved = run.require_resolved()
    options = run.services.fetch_options
    sources = run.services.sources
    if sources is not None and run.head:
        run.checkout = sources.fetch(
            _source_key(run),
            resolved.source,
            credentials=resolved.credentials,
            budgets=resolved.budgets,
            head=run.head,
        )
    else:
        run.checkout = git.fetch(
            resolved.source,
            app_uid=resolved.uid,
            credentials=resolved.credentials,
            options=options,
            budgets=resolved.budgets,
            head=run.head or None,
        )
    run.head = run.checkout.commit
    run.repo = git.Repository(
        run.checkout.repo, options=options, budgets=resolved.budgets, trees=run.services.trees
    )


def trust(run: Run) -> None:
    """The commit to deploy, verified: the head from the verified baseline, or a rollback target alone."""
    resolved = run.require_resolved()
    if run.checkout is None or run.repo is None:
        raise RuntimeError("the fetch step has not run")
    checkout, repo = run.checkout, run.repo
    baseline, settings = run.baseline or None, resolved.trust
    if run.target and run.target != run.checkout.commit:
        # A rollback target is re-verified as if it were the head, against the keys trusted now;
        # no fast-forward check, since going back is the point.
        checkout, baseline = replace(run.checkout, commit=run.target), None
        settings = TrustSettings(verify=VerifyMode.HEAD, require_fast_forward=False)

    def check() -> VerifiedSource:
        return verify(checkout, repo, last_applied=baseline, settings=settings, keys=resolved.keys)

    shared = run.services.verifications
    # Everything the verdict depends on is in the key: the same commit from the same baseline
    # under the same keys and settings is the same verdict, whichever app asks.
    run.verified = shared.get((checkout, baseline, settings, resolved.keys), check) if shared else check()


def render(run: Run) -> None:
    """The verified commit's objects: plain YAML or a kustomize build, within budgets, nothing remote."""
    resolved = run.require_resolved()
    if run.verified is None or run.repo is None:
        raise RuntimeError("the trust step has not run")
    limits = run.limits or Limits.from_budgets(resolved.budgets)
    rendered = load(
        run.repo,
        run.verified.commit,
        resolved.spec.source.path,
        limits=limits,
        kustomize_command=run.services.kustomize_command,
    )
    run.rendered = _decrypted(run, rendered, limits)


def _decrypted(run: Run, rendered: Rendered, limits: Limits) -> Rendered:
    """SOPS documents decrypted with the tenant's age identities; the digest stays the ciphertext's.

    The key Secret is read only when a commit has something encrypted. A kustomize build re-sorts
    keys and drops comments, so sops' whole-file MAC cannot hold after it (Flux's kustomize-controller
    does not check it either); every value still carries its own tag bound to its path, and the
    commit's signature vouches for the file.
    """
    leftover = decrypt.stray_ciphertext(rendered.manifests)
    if leftover:
        raise Stalled(
            Reason.DECRYPTION_FAILED,
            f"{leftover}: holds SOPS-encrypted values but no sops metadata (an encrypted List, or a "
            "value copied from another file): encrypt whole documents",
        )
    if not any(decrypt.is_encrypted(m.obj) for m in rendered.manifests):
        return rendered
    resolved = run.require_resolved()
    identities = None
    if resolved.tenant.decryption is not None:
        name = resolved.tenant.decryption.secret
        try:
            data = run.services.reader.operator_secret(name)
        except Stalled:
            raise Stalled(
                Reason.DECRYPTION_FAILED, f"the tenant's decryption Secret {name!r} does not exist"
            ) from None
        identities = decrypt.AgeIdentities.from_secret_data(data, secret=name)
    manifests = decrypt.decrypt(
        rendered.manifests,
        identities,
        sops_command=run.services.sops_command,
        limits=limits,
        verify_mac=not rendered.kustomized,
    )
    if len(manifests) != len(rendered.manifests):
        raise RuntimeError("decryption must keep one object per object")
    run.revealed = frozenset(
        value
        for before, after in zip(rendered.manifests, manifests, strict=True)
        if decrypt.is_encrypted(before.obj)
        for value in decrypt.revealed(before.obj, after.obj)
    )
    return replace(rendered, manifests=tuple(manifests))


def policy(run: Run) -> None:
    """Every object placed in the target namespace and checked against the tenant's policy."""
    resolved = run.require_resolved()
    if run.rendered is None:
        raise RuntimeError("the render step has not run")
    sorted_out = foreign.sort_out(run.rendered.manifests, tenant_namespaces=resolved.tenant.namespaces)
    run.notes = (*_missing_path_note(run), *sorted_out.notes)
    placed = check(sorted_out.kept, tenant=resolved.tenant, namespace=resolved.source.target_namespace)
    placed = _images_verified(run, placed)
    run.placed, run.tests = testjobs.split(placed)
    run.secrets = testjobs.secret_values(placed, revealed=run.revealed)


def _images_verified(run: Run, placed: list[Manifest]) -> list[Manifest]:
    """The tenant's image gate: allowed repositories and pins first (no network), then registries.

    What the registries need (credentials, CA, cosign keys) is read only when a commit has images
    and the policy needs a registry; tags resolved to digests come back in the manifests.
    """
    resolved = run.require_resolved()
    policy = resolved.tenant.images
    if policy is None:
        return placed
    if run.target:
        placed = _pinned_as_recorded(run, placed, run.target)
    uses = check_policy(placed, policy)  # raises before any registry is contacted or any Secret read
    if not uses:
        return placed
    # Verification (and its cryptography) is imported only once a tenant gates images.
    from gitward.images import verify as images_verify  # noqa: PLC0415

    shared = run.services.images or SharedImages()
    clients = shared.clients
    client: RegistryReader = clients.client()  # settings-free: a policy that needs no registry never uses it
    keys = None
    if images_verify.registry_needed(policy):
        client = _registry_client(run, policy, clients)
        keys = _image_keys(run, policy)
    verdict = images_verify.check_images(
        placed, policy, client=client, trusted_keys=keys, cache=shared.verdicts, uses=uses
    )
    run.images = verdict.images
    return list(verdict.manifests)


def _pinned_as_recorded(run: Run, placed: list[Manifest], commit: str) -> list[Manifest]:
    """A revision applied before (a rollback, a drift correction) gets the digests its tags had then.

    Resolving again would deploy whatever the tag points at now: a rollback could bring back the
    very image that failed, and a moved tag would pass for drift.
    """
    records = (
        run.services.history.records(run.services.operator, run.namespace, run.name, run.uid)
        if run.services.history is not None
        else store.list_records(run.services.operator, run.namespace, run.name)
    )
    digests: dict[str, str] = {}
    for record in records:
        spec = record.get("spec") or {}
        if spec.get("commit") == commit:
            digests.update({str(i["image"]): str(i["digest"]) for i in spec.get("images") or ()})
    if not digests:
        return placed
    pinned = []
    for manifest in placed:
        replacements = {
            field.path: f"{field.image}@{digests[field.image]}"
            for field in image_fields(manifest.obj)
            if field.image is not None and "@" not in field.image and field.image in digests
        }
        obj = replace_images(manifest.obj, replacements) if replacements else manifest.obj
        pinned.append(replace(manifest, obj=obj))
    return pinned


def _registry_client(run: Run, policy: ImagePolicy, clients: RegistryClients) -> RegistryReader:
    reader = run.services.reader
    credentials = b""
    if policy.credentials_secret:
        try:
            data = reader.operator_secret(policy.credentials_secret)
        except Stalled:
            raise Waiting(
                Reason.IMAGE_UNAVAILABLE,
                f"the registry credentials Secret {policy.credentials_secret!r} does not exist",
            ) from None
        credentials = data.get(".dockerconfigjson", b"")
    ca_pem = b""
    if policy.ca_from is not None:
        try:
            ca_pem = reader.key_config_map(policy.ca_from.config_map).get("ca.crt", "").encode()
        except Stalled:
            raise Waiting(
                Reason.IMAGE_UNAVAILABLE,
                f"the registry CA ConfigMap {policy.ca_from.config_map!r} does not exist",
            ) from None
    from gitward.images.registry import InvalidRegistrySettingsError  # noqa: PLC0415 - see _images_verified

    try:
        return clients.client(credentials=credentials, ca_pem=ca_pem)
    except InvalidRegistrySettingsError as error:
        raise Waiting(Reason.IMAGE_UNAVAILABLE, f"the tenant's registry settings: {error}") from None


def _image_keys(run: Run, policy: ImagePolicy) -> TrustedImageKeys:
    names = [ref.config_map for ref in policy.keys_from]
    try:
        maps = [run.services.reader.key_config_map(name) for name in names]
    except Stalled as error:
        raise Stalled(Reason.IMAGE_UNSIGNED, f"the tenant's image keys: {error.message}") from None
    from gitward.images.keys import TrustedImageKeys  # noqa: PLC0415 - see _images_verified

    return TrustedImageKeys.from_config_maps(maps, names=names)


def _missing_path_note(run: Run) -> tuple[str, ...]:
    missing = run.rendered.missing if run.rendered is not None else ""
    return (f"source.path {missing!r} does not exist in this commit: it has no objects",) if missing else ()


def applier(run: Run) -> Applier:
    """Writes as the tenant's ServiceAccount in the target namespace, owning objects for this app."""
    resolved = run.require_resolved()
    tenant = run.services.as_tenant(resolved.source.target_namespace, TENANT_SERVICE_ACCOUNT)
    force = resolved.spec.force or run.reclaim
    return Applier(tenant, owner=owner_of(resolved.namespace, resolved.name), force=force)


def dry_run(run: Run) -> None:
    """The fence ensured (unless previewing), then every apply and prune dry-run as the tenant."""
    resolved = run.require_resolved()
    namespace = resolved.source.target_namespace
    if not run.preview:
        ensure_namespace(
            run.services.operator,
            namespace,
            tenant_name=resolved.tenant_name,
            tenant=resolved.tenant,
            operator_account=run.services.operator_account,
            written=run.services.fences,
        )
    guard_spec = resolved.spec.prune_guard
    guard = PruneGuard(allow_empty=guard_spec.allow_empty, max_share=guard_spec.max_share_percent / 100)
    previous = run.previous_inventory if resolved.spec.prune else ()
    try:
        run.plan = applier(run).dry_run(run.placed, previous=previous, guard=guard)
        if run.tests:
            test_jobs(run).dry_run(run.tests, commit=run.target or run.head)
    except GitwardError as error:
        if error.reason is Reason.EMPTY_SOURCE:  # the guard, before any request: says nothing of the fence
            if _missing_path_note(run):
                error.message = f"{_missing_path_note(run)[0]}; {error.message}"
        elif run.services.fences is not None:
            # The fence is remembered as written; if the dry-run fails (a namespace deleted by hand,
            # a Role changed by an admin), the next attempt writes it again rather than trusting that.
            run.services.fences.pop(namespace, None)
        raise


def apply(run: Run) -> None:
    """Server-side apply as the tenant, tier by tier, then prune what left the inventory.

    Objects the app did not own yet are first written to ``status.applying`` (the one status
    write before the end of an attempt): if the operator dies during the apply, the next
    attempt knows they may exist, prunes them if they left git, and records the interruption.
    """
    if run.plan is None:
        raise RuntimeError("the dry-run step has not run")
    _note_applying(run, run.plan.inventory)
    if run.services.expectations is not None:
        # The app's own writes are not drift: its objects are watched again once the apply is done.
        run.services.expectations.forget((run.namespace, run.name, run.uid))
    run.result = applier(run).apply(run.plan)


_NOT_FOUND = 404


def _note_applying(run: Run, inventory: tuple[ObjectRef, ...]) -> None:
    known = set(run.previous_inventory)
    added = [ref for ref in inventory if ref not in known]
    if run.preview or not added or not run.uid:
        return
    pending = run.status.applying.inventory if run.status.applying else ()
    applying = Applying(
        commit=run.target or run.head,
        trigger=str(run.trigger),
        started_at=run.started,
        inventory=tuple(dict.fromkeys((*pending, *added))),
    )
    try:
        run.services.operator.merge_patch(
            run.ref, {"status": {"applying": applying.to_status()}}, subresource="status"
        )
    except APIError as error:
        if error.status != _NOT_FOUND:
            raise classify(error, ref=run.ref, dry_run=False) from None
        # No such app object (deleted meanwhile, or a run for an app that only exists in memory):
        # there is no status whose inventory a later prune would read, so nothing to note.


def health(run: Run) -> None:
    """Every workload healthy within ``healthTimeout``, else ``HealthTimeout`` (the objects stay applied)."""
    resolved = run.require_resolved()
    if run.result is None:
        raise RuntimeError("the apply step has not run")
    timeout = resolved.spec.health_timeout_seconds
    if run.health_seen is None:
        waiter = run.services.health or PollingHealth(run.services.operator)
        run.health_seen = waiter.wait(workloads(run.result), timeout=timeout)
    run.health = run.health_seen
    failure = unhealthy(run.health, timeout)
    if failure is not None:
        raise failure


def test_jobs(run: Run) -> TestJobs:
    """Runs the commit's test Jobs as the tenant's ServiceAccount in the target namespace."""
    resolved = run.require_resolved()
    tenant = run.services.as_tenant(resolved.source.target_namespace, TENANT_SERVICE_ACCOUNT)
    return TestJobs(tenant, owner=owner_of(resolved.namespace, resolved.name))


def start_tests(run: Run) -> dict[ObjectRef, int]:
    """After health: the commit's test Jobs created (stale runs deleted first); what to wait for."""
    return test_jobs(run).start(
        run.tests, namespace=run.require_resolved().source.target_namespace, commit=run.target or run.head
    )


def judge_tests(run: Run) -> None:
    """The test Jobs' results kept for the record; ``TestFailed`` unless every one succeeded."""
    if run.tests_seen is None:
        raise RuntimeError("the test Jobs have not been waited for")
    run.test_results = test_jobs(run).results(run.tests_seen, secrets=run.secrets)
    failed = testjobs.failure(run.test_results)
    if failed is not None:
        raise failed


PIPELINE: tuple[tuple[Step, Callable[[Run], None]], ...] = (
    (Step.RESOLVE, resolve),
    (Step.HEAD, head),
    (Step.FETCH, fetch),
    (Step.TRUST, trust),
    (Step.RENDER, render),
    (Step.POLICY, policy),
    (Step.DRY_RUN, dry_run),
    (Step.APPLY, apply),
    (Step.HEALTH, health),
)


def run_steps(run: Run, *, start: Step = Step.RESOLVE, stop_after: Step = Step.HEALTH) -> Run:
    """Run the steps from ``start`` to ``stop_after`` in order; the first that fails raises.

    ``run.step`` names the step that ran last (the one that raised, on failure).
    """
    for step, function in PIPELINE:
        if start <= step <= stop_after:
            run.step = step
            function(run)
    return run
