#!/usr/bin/env python3
"""Applying N objects: gitward's apply layer vs `kubectl apply --server-side`, same control plane, same run.

Both write N ConfigMaps as the same tenant ServiceAccount (gitward through
impersonation, kubectl with --as) into fresh, identically fenced namespaces.
gitward's figure includes everything it does per commit: one LIST per kind
for ownership, a server-side dry-run of every object, then the apply. Each
size is measured twice: creating the objects, and re-applying them
unchanged (every later reconcile). Ratios are gitward / kubectl (lower is
faster for gitward).

    .venv/bin/python benchmarks/apply_objects.py [--sizes 10 100 1000]

Uses $KUBECONFIG if set, else starts (and stops) its own hack/cluster.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from gitward.api.resources import parse_tenant_spec
from gitward.apply.run import Applier
from gitward.fence.baseline import TENANT_SERVICE_ACCOUNT
from gitward.fence.ensure import ensure_namespace
from gitward.kube import clients
from gitward.kube.objects import Objects
from gitward.render.manifests import Manifest
from support.kube import benchmark_cluster
from support.toolpaths import kubectl_binary


def configmaps(count: int, namespace: str, generation: int) -> list[Manifest]:
    return [
        Manifest(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": f"cm-{index:04d}", "namespace": namespace},
                "data": {"index": str(index), "generation": str(generation), "payload": "x" * 200},
            },
            "bench.yaml",
            index,
        )
        for index in range(count)
    ]


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    args = parser.parse_args()
    tenant = parse_tenant_spec(
        {
            "namespaces": ["bench"],
            "sources": [{"url": "https://git.example.com/*"}],
            "trust": {"keysFrom": [{"configMapRef": {"name": "k"}}]},
            "isolation": {"networkPolicy": "default-deny"},
        }
    )
    with benchmark_cluster() as kubeconfig:
        configuration = clients.load_configuration(kubeconfig)
        admin = Objects(clients.api_client(configuration))
        kubectl = kubectl_binary()
        print(
            f"{'N':>6} {'phase':<10} {'gitward s':>10} {'kubectl s':>10} {'ratio':>7}  (gitward: dry-run + apply)"
        )
        for size in args.sizes:
            run_id = uuid.uuid4().hex[:6]
            ours, theirs = f"bench-g-{size}-{run_id}", f"bench-k-{size}-{run_id}"
            for namespace in (ours, theirs):
                admin.apply(
                    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
                    field_manager="bench",
                )
                ensure_namespace(admin, namespace, tenant_name="bench", tenant=tenant)
            tenant_objects = Objects(
                clients.impersonating(configuration, clients.ServiceAccountRef(ours, TENANT_SERVICE_ACCOUNT))
            )
            applier = Applier(tenant_objects, owner=f"{ours}/bench")
            manifest_file = Path(tempfile.mkstemp(suffix=".yaml")[1])

            def run_gitward(generation: int) -> None:
                manifests = configmaps(size, ours, generation)  # noqa: B023 - used within the iteration
                applier.apply(applier.dry_run(manifests))  # noqa: B023

            def run_kubectl(generation: int) -> None:
                bodies = [m.obj for m in configmaps(size, theirs, generation)]  # noqa: B023
                manifest_file.write_text(yaml.safe_dump_all(bodies))  # noqa: B023
                subprocess.run(
                    [kubectl, "--kubeconfig", kubeconfig, "apply", "--server-side", "--field-manager=bench",
                     f"--as=system:serviceaccount:{theirs}:{TENANT_SERVICE_ACCOUNT}", "-f", str(manifest_file)],  # noqa: B023
                    check=True, stdout=subprocess.DEVNULL,
                )  # fmt: skip

            for phase, generation in (("create", 1), ("unchanged", 1), ("update", 2)):
                ours_s = timed(lambda g=generation: run_gitward(g))
                theirs_s = timed(lambda g=generation: run_kubectl(g))
                print(
                    f"{size:>6} {phase:<10} {ours_s:>10.2f} {theirs_s:>10.2f} {ours_s / theirs_s:>7.2f}",
                    flush=True,
                )
            manifest_file.unlink()
            for namespace in (ours, theirs):
                subprocess.run(
                    [kubectl, "--kubeconfig", kubeconfig, "delete", "namespace", namespace, "--wait=false"],
                    check=False, capture_output=True,
                )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
