"""The ``gitward`` command line.

Sub-commands follow kubectl habits (tables by default, ``-o json|yaml``,
``-n NAMESPACE``, a non-zero exit when something is wrong); each is a thin
shell over the same functions the operator uses.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

import gitward
from gitward import logs, shards
from gitward.api import budgets, conditions, resources
from gitward.api.refs import ObjectRef
from gitward.errors import GitwardError
from gitward.history.records import chain_breaks, sequence_of, successful_commits
from gitward.history.store import list_records
from gitward.kube import clients
from gitward.kube.objects import Objects
from gitward.kube.reads import KubeReader
from gitward.policy import comply
from gitward.policy.check import PolicyViolations
from gitward.reconcile.resolve import resolve_local
from gitward.reconcile.state import Run, Services
from gitward.reconcile.status import Step
from gitward.reconcile.steps import run_steps
from gitward.source import git


def _version(_args: argparse.Namespace) -> int:
    print(f"gitward {gitward.__version__} (API {resources.API_VERSION})")
    return 0


def _reasons(args: argparse.Namespace) -> int:
    reasons = [r.value for r in conditions.Reason]
    if args.output == "json":
        print(json.dumps(reasons))
    else:
        print("\n".join(reasons))
    return 0


def _objects(args: argparse.Namespace) -> Objects:
    return Objects(clients.api_client(clients.load_configuration(args.kubeconfig)))


def _print(rows: list[dict[str, Any]], columns: list[str], output: str) -> None:
    if output == "json":
        print(json.dumps(rows, indent=2))
    elif output == "yaml":
        print(yaml.safe_dump(rows, sort_keys=False), end="")
    else:
        print(table(rows, columns))


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A kubectl-style table: upper-case headers, columns padded to their widest cell."""
    cells = [[c.upper() for c in columns]] + [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return "\n".join(
        "   ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def _condition(body: dict[str, Any], kind: str) -> dict[str, Any]:
    for condition in (body.get("status") or {}).get("conditions") or ():
        if condition.get("type") == kind:
            return dict(condition)
    return {}


def _app_row(body: dict[str, Any]) -> dict[str, Any]:
    ready = _condition(body, "Ready")
    status = body.get("status") or {}
    hold = status.get("rollback") or {}
    return {
        "namespace": body["metadata"]["namespace"],
        "name": body["metadata"]["name"],
        "ready": ready.get("status", "Unknown"),
        "reason": ready.get("reason", ""),
        "revision": (status.get("lastAppliedRevision") or "")[:12],
        "held": (hold.get("commit") or "")[:12] if hold and not hold.get("released") else "",
        "message": ready.get("message", ""),
    }


def _status(args: argparse.Namespace) -> int:
    objects = _objects(args)
    if args.app:
        body = objects.get(
            ObjectRef(resources.GROUP, resources.VERSION, resources.APP.kind, args.namespace, args.app)
        )
        if body is None:
            print(f"GitOpsApp {args.namespace}/{args.app} not found", file=sys.stderr)
            return 1
        bodies = [body]
    else:
        bodies = objects.list(
            resources.API_VERSION, resources.APP.kind, None if args.all_namespaces else args.namespace
        )
    rows = [_app_row(b) for b in bodies]
    _print(rows, ["namespace", "name", "ready", "reason", "revision", "held", "message"], args.output)
    return 0 if all(r["ready"] == "True" for r in rows) else 1


def _history(args: argparse.Namespace) -> int:
    records = list_records(_objects(args), args.namespace, args.app)
    rows = [
        {
            "seq": sequence_of(r),
            "commit": r["spec"]["commit"][:12],
            "trigger": r["spec"]["trigger"],
            "outcome": r["spec"]["outcome"],
            "reason": r["spec"]["reason"],
            "signer": r["spec"].get("signer", "")[:20],
            "changes": len(r["spec"].get("changes") or ()),
            "finished": r["spec"].get("finishedAt", ""),
            "message": r["spec"].get("message", "")[:60],
        }
        for r in records
    ]
    _print(
        rows,
        ["seq", "commit", "trigger", "outcome", "reason", "signer", "changes", "finished", "message"],
        args.output,
    )
    if breaks := chain_breaks(records):
        print(f"warning: the history chain is broken before {', '.join(breaks)}", file=sys.stderr)
        return 1
    return 0


def _rollback(args: argparse.Namespace) -> int:
    objects = _objects(args)
    ref = ObjectRef(resources.GROUP, resources.VERSION, resources.APP.kind, args.namespace, args.app)
    records = list_records(objects, args.namespace, args.app)
    matches = sorted({c for c in successful_commits(records) if c.startswith(args.to)})
    if len(matches) != 1:
        print(
            f"{args.to!r} matches {len(matches)} successfully applied commits of {args.app}", file=sys.stderr
        )
        return 1
    objects.merge_patch(ref, {"spec": {"rollbackTo": matches[0]}})
    print(f"gitopsapp/{args.app} rolling back to {matches[0]}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    """Run the source checks on a local repository against a tenant's policy and keys, explaining each.

    The same steps as the operator (``head``, ``fetch``, ``trust``), stopping after ``trust``.
    """
    objects = _objects(args)
    reader = KubeReader(objects.api, operator_namespace=args.operator_namespace)
    repo_path = Path(args.repo).resolve()
    with tempfile.TemporaryDirectory(prefix="gitward-verify-") as cache:
        services = Services(
            reader=reader,
            operator=objects,
            as_tenant=lambda _namespace, _account: objects,  # verify stops before anything is applied
            fetch_options=git.FetchOptions(cache_root=Path(cache), allow_file_transport=True),
        )
        run = Run(
            app={"metadata": {"name": "cli-verify"}}, services=services, baseline=args.last_applied or ""
        )
        try:
            run.resolved = resolve_local(
                str(repo_path), tenant_name=args.tenant, branch=args.branch, reader=reader
            )
            print(f"branch policy: {args.branch!r} is allowed by {run.resolved.source.rule.url}")
            keys = run.resolved.keys
            print(f"trusted keys:  {len(keys.openpgp)} OpenPGP, {len(keys.ssh_signers)} SSH")
            run_steps(run, start=Step.HEAD, stop_after=Step.TRUST)
        except GitwardError as error:
            print(f"REFUSED {error.reason}: {error.message}")
            return 1
    verified = run.verified
    assert verified is not None  # noqa: S101 - the trust step ran
    print(f"branch head:   {run.head} (refs/heads/{args.branch} only)")
    mode = (
        "every commit since the last applied one" if run.resolved.tenant.verify.value == "all" else "the head"
    )
    print(f"signatures:    {len(verified.verified_commits)} commit(s) verified ({mode})")
    print(f"signer:        {verified.signer.format} {verified.signer.fingerprint} {verified.signer.identity}")
    print(f"OK {verified.commit} may be deployed for tenant {args.tenant}")
    return 0


def _diff(args: argparse.Namespace) -> int:
    """What the next apply would change: the operator's own steps up to the dry-run; writes nothing."""
    configuration = clients.load_configuration(args.kubeconfig)
    objects = Objects(clients.api_client(configuration))
    app = objects.get(
        ObjectRef(resources.GROUP, resources.VERSION, resources.APP.kind, args.namespace, args.app)
    )
    if app is None:
        print(f"GitOpsApp {args.namespace}/{args.app} not found", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="gitward-diff-") as cache:
        services = Services(
            reader=KubeReader(objects.api, operator_namespace=args.operator_namespace),
            operator=objects,
            as_tenant=lambda namespace, account: Objects(
                clients.impersonating(configuration, clients.ServiceAccountRef(namespace, account))
            ),
            fetch_options=git.FetchOptions(cache_root=Path(cache)),
            kustomize_command=tuple(args.kustomize.split()),
            sops_command=tuple(args.sops.split()),
        )
        run = Run(app=app, services=services, preview=True)
        try:
            run_steps(run, stop_after=Step.DRY_RUN)
        except GitwardError as error:
            print(f"REFUSED {error.reason}: {error.message}")
            remedies = error.remedies if isinstance(error, PolicyViolations) else ()
            if remedies:
                print(f"\n{comply.INSTRUCTIONS}\n")
                print("---\n".join(remedies), end="")
            return 1
    plan, verified = run.plan, run.verified
    assert plan is not None and verified is not None  # noqa: S101, PT018 - the dry-run step ran
    rows = [
        {"action": plan.action_of(body), "kind": ref.kind, "namespace": ref.namespace, "name": ref.name}
        for body in plan.bodies
        if (ref := ObjectRef.of(body))
    ]
    rows += [
        {"action": "prune", "kind": r.kind, "namespace": r.namespace, "name": r.name} for r in plan.prune
    ]
    print(f"commit {verified.commit} (signed by {verified.signer.fingerprint})", file=sys.stderr)
    _print(rows, ["action", "kind", "namespace", "name"], args.output)
    return 0


def _few_malloc_arenas() -> None:
    """Two malloc arenas, not glibc's up to eight per core: one per thread that ever allocated.

    The operator's threads (reconciles, requests, watches) each took an arena of their own, and
    the memory freed in each stayed with it: most of the peak RSS at a thousand apps. Like
    ``MALLOC_ARENA_MAX=2``, set before any thread starts; nothing on a libc without ``mallopt``.
    """
    import ctypes  # noqa: PLC0415 - only the operator needs this
    import ctypes.util  # noqa: PLC0415

    m_arena_max = -8
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(m_arena_max, 2)


def _without_kubernetes_client() -> None:
    """Keep the ``kubernetes`` package out of the operator process, even where it is installed.

    gitward talks to the API through its own client (``gitward.kube``). kopf imports the
    ``kubernetes`` package if it can, only to recognise its model classes, which the operator
    never hands it; with pydantic, that import alone held 16 MiB for the process's life. A
    ``None`` in ``sys.modules`` makes the import fail, which kopf expects where it is not installed.
    """
    if "kubernetes" not in sys.modules:
        sys.modules["kubernetes"] = None  # type: ignore[assignment]


def _run(args: argparse.Namespace) -> int:
    import os  # noqa: PLC0415 - only the operator needs these

    _few_malloc_arenas()
    # The event loop answers webhooks and watches while up to --reconcile-workers threads run Python;
    # at the default 5 ms a waiting loop got the GIL back only every 5 ms per turn, and a webhook
    # answer took hundreds of milliseconds when a push woke a thousand apps.
    sys.setswitchinterval(0.001)
    _without_kubernetes_client()

    from gitward.kube import leases  # noqa: PLC0415

    try:
        shard = shards.Shard.of(key=args.shard, hash_spec=args.shard_hash)
        timing = leases.Timing(args.lease_duration, args.renew_deadline, args.retry_period)
    except ValueError as error:
        print(f"gitward run: {error}", file=sys.stderr)
        return 2

    import kopf  # noqa: PLC0415
    import structlog  # noqa: PLC0415

    from gitward import handlers, leadership  # noqa: PLC0415 - registers the handlers

    logs.configure()
    kopf.configure(
        verbose=args.verbose, log_format=kopf.LogFormat.JSON if args.log_json else kopf.LogFormat.PLAIN
    )
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    config = handlers.Config(
        namespace=args.operator_namespace,
        cache_dir=args.cache_dir,
        kubeconfig=args.kubeconfig,
        webhook_host=args.webhook_host,
        webhook_port=args.webhook_port,
        kustomize=tuple(args.kustomize.split()),
        sops=tuple(args.sops.split()),
        service_account=args.service_account,
        ceilings=budgets.parse_ceilings(args.budget_ceiling),
        reconcile_workers=args.reconcile_workers,
        tenant_concurrency=args.tenant_concurrency,
        metrics_auth=args.metrics_auth,
        shard=shard,
    )
    memo = kopf.Memo(config=config)

    def operate() -> None:
        kopf.run(clusterwide=True, standalone=True, memo=memo, liveness_endpoint=args.liveness or None)

    structlog.get_logger("gitward.run").info(
        "reconciling one shard", shard=str(shard), leader_elect=args.leader_elect, lease=shard.lease_name
    )
    if not args.leader_elect:
        operate()
        return 0
    elector = leases.LeaderElector(
        clients.api_client(clients.load_configuration(args.kubeconfig)),
        namespace=args.operator_namespace,
        name=shard.lease_name,
        timing=timing,
    )
    with leadership.leader(elector, liveness=args.liveness) as leading:
        if not leading:
            return 0
        try:
            operate()
        finally:
            leadership.drain(memo)  # still renewing: no standby starts while a reconcile runs here
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, separate from :func:`main` so tests can inspect it."""
    parser = argparse.ArgumentParser(
        prog="gitward",
        description="Deploy from Git only what can be proven: allowed branches, signed commits, "
        "validated manifests, isolated tenants, full history.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    version = commands.add_parser("version", help="print the version of gitward and its API")
    version.set_defaults(func=_version)
    reasons = commands.add_parser("reasons", help="list every condition reason gitward reports")
    reasons.add_argument("-o", "--output", choices=["text", "json"], default="text")
    reasons.set_defaults(func=_reasons)

    def kube_command(name: str, help_text: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help_text)
        command.add_argument(
            "--kubeconfig", default=None, help="kubeconfig to use (default: in-cluster, then ~/.kube)"
        )
        command.add_argument("-n", "--namespace", default="default", help="the app's namespace")
        command.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
        return command

    status = kube_command("status", "show apps: ready, reason, applied revision, rollback hold")
    status.add_argument("app", nargs="?")
    status.add_argument("-A", "--all-namespaces", action="store_true")
    status.set_defaults(func=_status)
    history = kube_command("history", "the change records of an app, oldest first")
    history.add_argument("app")
    history.set_defaults(func=_history)
    rollback = kube_command("rollback", "go back to a commit that was applied before (sets spec.rollbackTo)")
    rollback.add_argument("app")
    rollback.add_argument(
        "--to", required=True, help="a commit id (or unique prefix) with a successful record"
    )
    rollback.set_defaults(func=_rollback)
    verify_cmd = commands.add_parser("verify", help="run the source checks on a local repository, explained")
    verify_cmd.add_argument("--kubeconfig", default=None)
    verify_cmd.add_argument("--operator-namespace", default="gitward-system")
    verify_cmd.add_argument("--tenant", required=True)
    verify_cmd.add_argument("--repo", required=True, help="path to a local git repository")
    verify_cmd.add_argument("--branch", required=True)
    verify_cmd.add_argument(
        "--last-applied", default=None, help="check fast-forward and signatures since this commit"
    )
    verify_cmd.set_defaults(func=_verify)
    diff = kube_command("diff", "what the next apply would change, from a server-side dry-run")
    diff.add_argument("app")
    diff.add_argument("--operator-namespace", default="gitward-system")
    diff.add_argument("--kustomize", default="kubectl kustomize")
    diff.add_argument("--sops", default="sops", help="the sops command (SOPS-encrypted manifests)")
    diff.set_defaults(func=_diff)
    _add_run_parser(commands)
    return parser


def _add_run_parser(commands: Any) -> None:  # noqa: ANN401 - argparse's private subparsers type
    """``gitward run``: the operator's own settings, which no resource can change."""
    run = commands.add_parser("run", help="run the operator")
    run.add_argument("--kubeconfig", default=None)
    run.add_argument(
        "--operator-namespace", default="gitward-system", help="where trusted-key ConfigMaps live"
    )
    run.add_argument("--cache-dir", default="/var/cache/gitward", help="git cache (0700)")
    run.add_argument("--webhook-host", default="0.0.0.0")  # noqa: S104 - fenced by the operator's NetworkPolicy
    run.add_argument("--webhook-port", type=int, default=9090)
    run.add_argument("--kustomize", default="kubectl kustomize", help="the kustomize command")
    run.add_argument("--sops", default="sops", help="the sops command (SOPS-encrypted manifests)")
    run.add_argument(
        "--liveness", default="http://0.0.0.0:8080/healthz", help="kopf liveness endpoint ('' to disable)"
    )
    run.add_argument(
        "--service-account",
        default="",
        help="NAMESPACE/NAME of the operator's ServiceAccount, bound to the fence in each tenant namespace",
    )
    run.add_argument(
        "--budget-ceiling",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="the most any tenant's spec.limits.NAME may be (e.g. fetchBytes=1Gi); repeatable",
    )
    run.add_argument(
        "--reconcile-workers", type=int, default=16, help="threads for git, render and apply work, shared"
    )
    run.add_argument(
        "--tenant-concurrency",
        type=int,
        default=8,
        help="reconciles one tenant may run at once, so one tenant cannot take every worker",
    )
    run.add_argument(
        "--metrics-auth",
        action="store_true",
        help="serve /metrics only to bearer tokens that may get /metrics (TokenReview, SubjectAccessReview)",
    )
    _add_shard_flags(run)
    run.add_argument("--verbose", action="store_true", help="log every kopf step")
    run.add_argument("--log-json", action="store_true", help="kopf's own logs as JSON too")
    run.set_defaults(func=_run)


def _shard_key(value: str) -> str:
    try:
        return shards.validate_key(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _shard_hash(value: str) -> str:
    try:
        shards.parse_hash(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} must be a positive number of seconds")
    return seconds


def _add_shard_flags(run: argparse.ArgumentParser) -> None:
    """Sharding and leader election: which apps this process owns, and one active replica per shard."""
    which = run.add_mutually_exclusive_group()
    which.add_argument(
        "--shard",
        type=_shard_key,
        default=None,
        metavar="KEY",
        help=f"own only the apps labelled {shards.SHARD_LABEL}=KEY (default: the apps without that label)",
    )
    which.add_argument(
        "--shard-hash",
        type=_shard_hash,
        default=None,
        metavar="I/N",
        help=f"own the apps without {shards.SHARD_LABEL} whose sha256(namespace/name) mod N is I",
    )
    run.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="reconcile only while holding the shard's Lease (gitward-shard-KEY in the operator namespace); "
        "other replicas stand by",
    )
    run.add_argument(
        "--lease-duration",
        type=_seconds,
        default=15.0,
        metavar="SECONDS",
        help="how long a standby waits after the leader's last renewal before taking over",
    )
    run.add_argument(
        "--renew-deadline",
        type=_seconds,
        default=10.0,
        metavar="SECONDS",
        help="how long the leader keeps trying to renew before it exits (shorter than the lease duration)",
    )
    run.add_argument(
        "--retry-period",
        type=_seconds,
        default=2.0,
        metavar="SECONDS",
        help="how often the leader renews and a standby tries to acquire",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gitward`` console script."""
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
