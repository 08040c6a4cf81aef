#!/usr/bin/env python3
"""The operator's peak memory, idle and under each hostile-input attack.

For each row a fresh `gitward run` process (a fresh cache) is started
against the local control plane and a loopback HTTPS git server; the row's
tenant pushes its commit (a signed ConfigMap for "idle", an attack from
``tests/support/hostile.py`` otherwise), creates its app, and waits until
the app is Ready (idle) or refused with the attack's reason. The figure is
the kernel's high-water mark of the operator process's resident set
(``VmHWM`` in /proc/PID/status) at that point: the most it ever held. git,
kustomize, gpg and ssh-keygen run as children under their own OS limits
and are not counted in it. The target is 256 MiB under every attack.

Uses $KUBECONFIG if set, else starts (and stops) its own hack/cluster. Run:
    .venv/bin/python benchmarks/hostile_rss.py [--only NAME ...]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml
from kubernetes import client
from kubernetes import config as kube_config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.gitservers import HttpsGitServer
from support.hostile import ATTACKS
from support.kube import benchmark_cluster
from support.operator import OperatorProcess, World
from support.pipeline import configmap

TARGET_MIB = 256


def install_crds(api: client.ApiClient) -> None:
    extensions = client.ApiextensionsV1Api(api)
    for path in sorted((REPO / "crds").glob("gitward.dev_*.yaml")):
        with contextlib.suppress(client.ApiException):
            extensions.create_custom_resource_definition(yaml.safe_load(path.read_text()))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        crds = extensions.list_custom_resource_definition().items
        established = [
            c
            for c in crds
            if any(x.type == "Established" and x.status == "True" for x in c.status.conditions or [])
        ]
        if len([c for c in established if c.spec.group == "gitward.dev"]) == 3:
            return
        time.sleep(0.5)
    raise RuntimeError("CRDs not established")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise RuntimeError(f"timed out waiting for {what}")


def measure(
    name: str, *, kubeconfig: str, api: client.ApiClient, server: HttpsGitServer, root: Path
) -> tuple[str, float, float]:
    """Start an operator, run one row, and return (what the app ended with, peak RSS MiB, seconds)."""
    namespace = f"gitward-bench-{os.getpid()}-{len(list(root.iterdir()))}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    work = root / name
    work.mkdir()
    world = World(work, api, server, namespace)
    try:
        process = OperatorProcess(Path(kubeconfig), namespace, work / "cache", work / "operator.log")
        with process:
            assert process.process is not None
            started = time.monotonic()
            if name == "idle":
                world.work.commit({"deploy/config.yaml": configmap("settings", v="1")}, sign=world.signer)
                world.work.push()
                world.create_app(interval="10s")
                wait_for(lambda: world.ready().get("status") == "True", 120, "idle app Ready")
                time.sleep(15)
            else:
                attack = ATTACKS[name]
                attack.push(world, server)
                if name != "malformed-commit":
                    world.work.push()
                world.create_app(interval="10s")
                wait_for(lambda: world.ready().get("reason") == attack.reason, 300, f"{name} refused")
            seconds = time.monotonic() - started
            ready = world.ready()
            return f"{ready.get('status')}/{ready.get('reason')}", peak_rss_mib(process.process.pid), seconds
    finally:
        world.cleanup()
        with contextlib.suppress(client.ApiException):
            core.delete_namespace(namespace)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="*", default=None, help="rows to run (idle and attack names)")
    args = parser.parse_args()
    rows = args.only or ["idle", *sorted(ATTACKS)]
    results = []
    with benchmark_cluster() as kubeconfig, tempfile.TemporaryDirectory(prefix="gitward-bench-rss-") as tmp:
        api = kube_config.new_client_from_config(config_file=kubeconfig)  # the harness's own client
        install_crds(api)
        root = Path(tmp)
        (root / "srv").mkdir()
        (root / "runs").mkdir()
        with HttpsGitServer(root / "srv", root / "tls") as server:
            for name in rows:
                ended, peak, seconds = measure(
                    name, kubeconfig=kubeconfig, api=api, server=server, root=root / "runs"
                )
                results.append((name, ended, peak, seconds))
                print(f"  {name}: {ended}, peak {peak:.1f} MiB, {seconds:.1f}s", file=sys.stderr)
    print(f"\n{'row':<24} {'app ended with':<32} {'peak RSS':>10} {'vs 256 MiB':>10} {'time':>8}")
    for name, ended, peak, seconds in results:
        print(f"{name:<24} {ended:<32} {peak:>7.1f} MiB {peak / TARGET_MIB:>10.2f} {seconds:>7.1f}s")
    worst = max(peak for _, _, peak, _ in results)
    print(
        f"\nworst peak: {worst:.1f} MiB ({'within' if worst < TARGET_MIB else 'OVER'} the {TARGET_MIB} MiB target)"
    )
    return 0 if worst < TARGET_MIB else 1


if __name__ == "__main__":
    sys.exit(main())
