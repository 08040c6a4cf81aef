#!/usr/bin/env python3
"""gitward at scale: N apps on the local control plane, with Flux's published figures beside them.

One row per N in --apps, each with a fresh `gitward run` process and fresh namespaces, all on
one cluster (hack/cluster, or $KUBECONFIG). Setup of a row: one tenant (``World`` from
tests/support/operator.py) trusting one SSH key; one HTTPS git server on loopback; one shared
repository with a directory per app (``apps/app-0001/`` ...: a ConfigMap, a headless Service, a
ServiceAccount and a one-replica Deployment, unique names) in one SSH-signed commit; N apps on it
with the interval --interval; and --own-apps more apps, each with its own small repository (the
first is the push app; all of them serve as webhook routes). kwok runs the pods: the script adds
kwok nodes when the cluster has too few pod slots, and removes them at the end.

Phases of a row, each printed:

cold     the apps exist first, then the operator starts: seconds from its start until each app
         is Ready=True with lastAppliedRevision at the commit (its Deployment Available).
commit   one signed commit changing every app's ConfigMap, pushed, then ONE webhook for the shared
         repository, as a Git host sends it: seconds from the push until each app is Ready=True
         at the new commit. Without the webhook (n/a) the apps find it by polling.
push     --pushes times, with the N apps idle: a signed commit to the push app's own repository and
         its webhook; seconds from the push until that app is Ready=True at it.
hook     --hook-requests authenticated webhook POSTs, paced to stay within each route's rate limit,
         over the own-repository routes and (every 40th) the shared one; milliseconds until the
         HTTP answer. Nothing new was pushed: each woken app finds nothing to do.
idle     nothing new for at least --idle-intervals intervals: the operator's CPU time, its
         children's included (git; /proc/PID/stat utime+stime+cutime+cstime), per app per interval;
         the requests its own Kubernetes clients made (gitward_kube_requests_total, by verb), per
         finished reconcile; and the API server's own count of writes from every client
         (apiserver_request_total) as a cross-check.
rss      the operator's peak resident set (VmHWM in /proc/PID/status): the most it ever held.

Status is read with one LIST of all GitOpsApps every 0.5 s (a server-side Table of the CRD's
printer columns: Ready and Revision, a few hundred bytes per app), so per-app times are exact to
about half a second; the push app with one GET every 50 ms. The cold start is also split by the
API server's own timestamps (whole seconds): when each Deployment was created (the operator's
part) and how long it then took to become Available (kube-controller-manager, scheduler, kwok).

Every target is the issue's, set for 1000 apps x 4 objects; smaller rows are shown against them
too. Flux's anchor: 1000 Kustomizations reconciled in 4 min 16 s on a 16-core runner, 175 MiB
peak RSS.

    .venv/bin/python benchmarks/scale.py [--apps 10,100,1000] [--interval 30s] [--pushes 20] [--keep]

Uses $KUBECONFIG if set, else starts (and stops) its own hack/cluster. Loopback only. --keep leaves
the namespaces, apps, logs, repositories and (without $KUBECONFIG) the cluster for debugging, and
prints where they are; the operator and the git server stop with the script in every case.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import datetime as dt
import hashlib
import hmac
import importlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes import config as kube_config
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from gitward.api import resources
from gitward.api.resources import parse_duration
from gitward.source import urls
from support.gitservers import HttpsGitServer
from support.kube import benchmark_cluster
from support.operator import WEBHOOK_SECRET, OperatorProcess, World
from support.paths import CLUSTER
from support.pipeline import RESTRICTED_POD
from support.signing import WorkRepo

# The issue's targets (1000 apps x 4 objects) and Flux's published anchor.
COLD_TARGET_S = 120.0
COMMIT_TARGET_S = 60.0
IDLE_CPU_TARGET_MS = 5.0
RSS_TARGET_MIB = 150.0
HOOK_P99_TARGET_MS = 100.0
PUSH_P50_TARGET_S = 2.0
FLUX_COLD_S = 256.0  # 4 min 16 s, 1000 Kustomizations, 16-core runner
FLUX_RSS_MIB = 175.0

LIST_EVERY = 0.5
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
GET_EVERY = 0.05
KWOK_NODE_PODS = 1100
WRITE_VERBS = ("POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION")
READ_VERBS = ("GET", "LIST", "WATCH")
APP_OBJECT_RESOURCES = ("configmaps", "services", "serviceaccounts", "deployments", "replicasets", "pods")
# Loopback only, whatever the environment says about proxies.
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def log(message: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class PhaseError(Exception):
    """A phase could not finish (timed out, or the operator refused something); the row goes on without it."""


# --- figures -------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile, linearly interpolated between the closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(the process's own CPU seconds, its waited-for children's), from /proc/PID/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # fields[0] is field 3 (state)
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    ticks = os.sysconf("SC_CLK_TCK")
    return (utime + stime) / ticks, (cutime + cstime) / ticks


def rss_mib(pid: int, field: str = "VmHWM") -> float:
    """The process's peak (VmHWM) or current (VmRSS) resident set, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field}")


def counter_by_label(text: str, family_name: str, label: str) -> dict[str, float] | None:
    """A counter's ``_total`` samples summed by one label; None if the family is not exported."""
    found: dict[str, float] | None = None
    for family in text_string_to_metric_families(text):
        if family.name != family_name:
            continue
        found = collections.defaultdict(float)
        for sample in family.samples:
            if sample.name.endswith("_total"):
                found[sample.labels.get(label, "")] += sample.value
    return dict(found) if found is not None else None


def reconciles_finished(text: str) -> int:
    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "gitward_reconcile_duration_seconds":
            total += sum(s.value for s in family.samples if s.name.endswith("_count"))
    return int(total)


_APISERVER_SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def apiserver_requests(api: client.ApiClient) -> collections.Counter[tuple[str, str, str]]:
    """``apiserver_request_total`` summed by (verb, group, resource): every client's requests."""
    counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for line in raw_call(api, "GET", "/metrics").decode().splitlines():
        match = _APISERVER_SAMPLE.match(line)
        if match:
            labels = dict(_LABEL.findall(match["labels"]))
            key = (labels.get("verb", ""), labels.get("group", ""), labels.get("resource", ""))
            counts[key] += int(float(match["value"]))
    return counts


def write_categories(delta: collections.Counter[tuple[str, str, str]]) -> dict[str, int]:
    """Writes from every client, by who is likely behind them."""
    out = collections.Counter()
    for (verb, group, resource), count in delta.items():
        if verb not in WRITE_VERBS or count <= 0:
            continue
        if group == resources.GROUP:
            out["gitward.dev"] += count
        elif resource == "events":
            out["events"] += count
        elif group in ("", "apps") and resource in APP_OBJECT_RESOURCES:
            out["app objects"] += count
        elif group == "coordination.k8s.io" or resource == "nodes":
            out["leases+nodes"] += count
        else:
            out[f"{group or 'core'}/{resource}"] += count
    return dict(out)


# --- manifests and repositories -------------------------------------------------------------------


def app_manifests(name: str, revision: int) -> dict[str, str]:
    """The four objects of one app, by file name: unique names, a restricted pod, a headless Service."""
    pod = copy.deepcopy(RESTRICTED_POD)
    pod["serviceAccountName"] = name
    pod["automountServiceAccountToken"] = False
    labels = {"app": name}
    docs = {
        "config.yaml": {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{name}-config"},
            "data": {"app": name, "revision": str(revision)},
        },
        "service.yaml": {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {"clusterIP": "None", "selector": labels, "ports": [{"name": "http", "port": 8080}]},
        },
        "serviceaccount.yaml": {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
        "deployment.yaml": {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": pod},
            },
        },
    }
    return {file: yaml.safe_dump(body, sort_keys=False) for file, body in docs.items()}


def write_tree(work: WorkRepo, files: dict[str, str]) -> None:
    for name, content in files.items():
        target = work.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)


def commit_all(work: WorkRepo, files: dict[str, str], world: World, message: str) -> str:
    """Write ``files``, then one signed commit of everything (one `git add -A`, not one per file)."""
    write_tree(work, files)
    work.git("add", "-A")
    return work.commit({".bench-revision": message + "\n"}, message=message, sign=world.signer)


def app_name(index: int) -> str:
    return f"app-{index:04d}"


def own_name(index: int) -> str:
    return f"own-{index:02d}"


# --- the cluster ------------------------------------------------------------------------------------


@contextlib.contextmanager
def cluster(*, keep: bool) -> Iterator[str]:
    """$KUBECONFIG if set; else a hack/cluster of our own (left running with --keep)."""
    if os.environ.get("KUBECONFIG") or not keep:
        with benchmark_cluster() as kubeconfig:
            yield kubeconfig
        return
    state = Path(tempfile.mkdtemp(prefix="gitward-scale-cluster-"))
    subprocess.run(
        [sys.executable, str(CLUSTER), "up", "--state-dir", str(state)], check=True, stdout=subprocess.DEVNULL
    )
    try:
        yield str(state / "admin.kubeconfig")
    finally:
        log(f"--keep: the cluster still runs; KUBECONFIG={state / 'admin.kubeconfig'}; stop it with "
            f"{CLUSTER} down --state-dir {state}")  # fmt: skip


def install_crds(api: client.ApiClient) -> None:
    """The CRDs as this tree has them (older ones are replaced), once established."""
    extensions = client.ApiextensionsV1Api(api)
    names = set()
    for path in sorted((REPO / "crds").glob("gitward.dev_*.yaml")):
        body = yaml.safe_load(path.read_text())
        names.add(body["metadata"]["name"])
        try:
            extensions.create_custom_resource_definition(body)
        except client.ApiException as error:
            if error.status != 409:
                raise
            current = extensions.read_custom_resource_definition(body["metadata"]["name"])
            body["metadata"]["resourceVersion"] = current.metadata.resource_version
            extensions.replace_custom_resource_definition(body["metadata"]["name"], body)

    def established() -> bool:
        crds = extensions.list_custom_resource_definition().items
        done = {
            crd.metadata.name
            for crd in crds
            if any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])
        }
        return names <= done

    wait_for(established, 60, "gitward's CRDs established")


def wait_for(predicate: Callable[[], object], timeout: float, what: str, every: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise PhaseError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def raw_call(api: client.ApiClient, method: str, path: str, *, query: dict[str, str] | None = None,
             body: object = None, content_type: str = "application/json",
             accept: str = "application/json, text/plain") -> bytes:  # fmt: skip
    """One request through the client's auth and TLS; the answer as bytes.

    No model classes: deserializing a thousand objects into them costs seconds.
    """
    method, url, headers, serialized, post = api.param_serialize(
        method=method, resource_path=path, query_params=list((query or {}).items()),
        header_params={"Accept": accept, "Content-Type": content_type},
        body=body, auth_settings=["BearerToken"],
    )  # fmt: skip
    response = api.call_api(
        method, url, header_params=headers, body=serialized, post_params=post, _request_timeout=60
    )
    data = response.read()
    if not 200 <= response.status <= 299:
        raise client.ApiException(status=response.status, reason=data[:300].decode(errors="replace"))
    return bytes(data)


def raw_list(api: client.ApiClient, path: str, **query: str) -> list[dict[str, Any]]:
    return list(json.loads(raw_call(api, "GET", path, query=query))["items"])


def ensure_kwok_capacity(api: client.ApiClient, pods_needed: int, created: list[str]) -> None:
    """Add kwok nodes (KWOK_NODE_PODS pods each) until the fake nodes have ``pods_needed`` free slots."""
    core = client.CoreV1Api(api)
    nodes = raw_list(api, "/api/v1/nodes")
    fake = [n for n in nodes if (n["metadata"].get("annotations") or {}).get("kwok.x-k8s.io/node") == "fake"]
    slots = sum(int((n.get("status") or {}).get("allocatable", {}).get("pods", 0)) for n in fake)
    names = {n["metadata"]["name"] for n in fake}
    used = sum(
        1
        for pod in raw_list(api, "/api/v1/pods", fieldSelector="status.phase!=Succeeded,status.phase!=Failed")
        if pod["spec"].get("nodeName") in names
    )
    missing = pods_needed - (slots - used)
    if missing <= 0:
        log(f"kwok: {len(fake)} node(s), {slots - used} free pod slots for {pods_needed} pods")
        return
    count = math.ceil(missing / KWOK_NODE_PODS)
    log(f"kwok: {slots - used} free pod slots, {pods_needed} needed: adding {count} node(s)")
    for _ in range(count):
        name = f"kwok-scale-{uuid.uuid4().hex[:6]}"
        capacity = {"cpu": "64", "memory": "512Gi", "pods": str(KWOK_NODE_PODS)}
        core.create_node({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                "labels": {"type": "kwok", "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                           "kubernetes.io/arch": "amd64"},
            },
            "status": {"allocatable": capacity, "capacity": capacity},
        })  # fmt: skip
        created.append(name)

        def ready(node: str = name) -> bool:
            status = core.read_node(node).status
            return any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])

        wait_for(ready, 60, f"kwok node {name} Ready")


# --- webhooks ---------------------------------------------------------------------------------------


def load_route_token() -> Callable[[bytes, str], str] | None:
    """``gitward.webhook.route_token`` if this tree has it (the per-repository route), else None."""
    try:
        module = importlib.import_module("gitward.webhook")
    except ImportError:
        return None
    return getattr(module, "route_token", None)


@dataclass
class Route:
    """One webhook route: the repository it stands for and the path it is served on."""

    url: str
    path: str

    def post(self, port: int, after: str) -> tuple[int, float]:
        """Send a GitHub push event for ``after``; return (HTTP status, seconds until the answer)."""
        body = json.dumps(
            {"ref": "refs/heads/main", "after": after, "repository": {"clone_url": self.url}}
        ).encode()
        headers = {
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": str(uuid.uuid4()),
            "X-Hub-Signature-256": "sha256=" + hmac.new(WEBHOOK_SECRET, body, hashlib.sha256).hexdigest(),
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}{self.path}", data=body, headers=headers, method="POST"
        )
        started = time.perf_counter()
        try:
            with NO_PROXY.open(request, timeout=30) as response:
                response.read()
                status = int(response.status)
        except urllib.error.HTTPError as error:
            status = int(error.code)
        return status, time.perf_counter() - started


# --- one row ----------------------------------------------------------------------------------------


@dataclass
class Idle:
    """What the no-op window cost."""

    window: float
    intervals: float
    apps: int
    reconciles: int
    cpu: float
    children_cpu: float
    kube: dict[str, float] | None
    apiserver_writes: dict[str, int]
    drift_checks: dict[str, float] | None = None  # gitward_drift_checks_total by kind (fast, full)

    @property
    def cpu_ms_per_app_interval(self) -> float:
        """The operator's CPU (children included) per app per interval, in milliseconds."""
        return (self.cpu + self.children_cpu) * 1000 / self.apps / self.intervals

    @property
    def gitward_writes_seen(self) -> int:
        """Writes the API server counted that gitward could have made (not leases and nodes, kwok's)."""
        return sum(n for category, n in self.apiserver_writes.items() if category != "leases+nodes")

    def kube_sum(self, verbs: tuple[str, ...]) -> float | None:
        """The operator's own API requests with these verbs in the window (None without the metric)."""
        return None if self.kube is None else sum(self.kube.get(v, 0) for v in verbs)


@dataclass
class Row:
    """The figures of one row."""

    apps: int
    own_apps: int
    cold: list[float] = field(default_factory=list)
    cold_cpu: float | None = None
    cold_requests: dict[str, float] | None = None
    cold_created: list[float] = field(default_factory=list)  # Deployment created, s after the start
    cold_available: list[float] = field(default_factory=list)  # Deployment created -> Available, s
    commit: list[float] = field(default_factory=list)
    commit_trigger: str = ""
    commit_cpu: float | None = None
    push: list[float] = field(default_factory=list)
    hook: list[float] = field(default_factory=list)
    hook_codes: collections.Counter[int] = field(default_factory=collections.Counter)
    idle: Idle | None = None
    rss: float | None = None
    rss_cold: float | None = None  # the peak when the cold start ended
    rss_now: float | None = None  # the resident set at the end
    notes: list[str] = field(default_factory=list)
    log_path: Path | None = None
    incomplete: bool = False  # a phase failed: the figures after it are missing


@dataclass(frozen=True)
class AppState:
    """What the benchmark reads of an app: its Ready condition and the revision it last applied."""

    ready: str
    reason: str
    revision: str

    @classmethod
    def of(cls, app: dict[str, Any]) -> AppState:
        """From a whole GitOpsApp."""
        status = app.get("status") or {}
        for condition in status.get("conditions") or ():
            if condition.get("type") == "Ready":
                ready, reason = str(condition.get("status")), str(condition.get("reason"))
                break
        else:
            ready, reason = "", "no status yet"
        return cls(ready, reason, str(status.get("lastAppliedRevision") or ""))

    def at(self, commit: str) -> bool:
        """Ready=True with ``commit`` applied."""
        return self.ready == "True" and self.revision == commit


class Bench:
    """One row: its world, repositories, apps and operator; everything it made is removed by close()."""

    def __init__(self, args: argparse.Namespace, n: int, *, kubeconfig: str, api: client.ApiClient,
                 server: HttpsGitServer, root: Path) -> None:  # fmt: skip
        self.args = args
        self.n = n
        self.kubeconfig = kubeconfig
        self.api = api
        self.server = server
        self.root = root
        self.row = Row(apps=n, own_apps=args.own_apps)
        self.operator_namespace = f"scale-{n}-{uuid.uuid4().hex[:6]}"
        self._world: World | None = None
        self._operator: OperatorProcess | None = None
        self.own: list[WorkRepo] = []
        self.shared_url = ""
        self.commits: dict[str, str] = {}  # app name -> the commit it should reach

    @property
    def world(self) -> World:
        """The row's tenant, namespace, signing key and shared repository (made by setup())."""
        if self._world is None:
            raise RuntimeError("setup() has not run")
        return self._world

    @property
    def operator(self) -> OperatorProcess:
        """The row's `gitward run` (started by cold_start())."""
        if self._operator is None or self._operator.process is None:
            raise RuntimeError("cold_start() has not run")
        return self._operator

    @property
    def pid(self) -> int:
        """The operator's process id."""
        assert self.operator.process is not None
        return self.operator.process.pid

    # setup

    def setup(self) -> None:
        """Namespaces, tenant and keys (World), the repositories with their first commit, and every app."""
        core = client.CoreV1Api(self.api)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=self.operator_namespace)))
        self._world = world = World(self.root, self.api, self.server, self.operator_namespace)
        log(f"N={self.n}: namespace {world.namespace}, tenant {world.tenant}, writing the shared repository")
        files = {
            f"apps/{app_name(i)}/{f}": c
            for i in range(self.n)
            for f, c in app_manifests(app_name(i), 1).items()
        }
        shared = commit_all(world.work, files, world, "scale: every app at revision 1")
        world.work.push()
        self.shared_url = self.server.url(world.repo_name)
        for k in range(self.args.own_apps):
            work = WorkRepo.create(self.root / f"own-{world.id}-{k}")
            work.bare_remote("origin", self.server.root / f"team/{world.id}-{own_name(k)}.git")
            self.commits[own_name(k)] = commit_all(
                work, self.deploy_files(own_name(k), 1), world, "revision 1"
            )
            work.push()
            self.own.append(work)
        self.commits.update({app_name(i): shared for i in range(self.n)})
        log(f"N={self.n}: creating {self.n} + {self.args.own_apps} GitOpsApps")
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(self.create_app, [app_name(i) for i in range(self.n)]))
            list(pool.map(self.create_app, [own_name(k) for k in range(self.args.own_apps)]))

    @staticmethod
    def deploy_files(name: str, revision: int) -> dict[str, str]:
        """An own-repository app's files, under deploy/."""
        return {f"deploy/{f}": c for f, c in app_manifests(name, revision).items()}

    def own_url(self, k: int) -> str:
        """The URL of the k-th own repository."""
        return self.server.url(f"team/{self.world.id}-{own_name(k)}.git")

    def create_app(self, name: str) -> None:
        """One GitOpsApp, on the shared repository (app-*) or its own (own-*)."""
        if name.startswith("own-"):
            url, path = self.own_url(int(name.removeprefix("own-"))), "deploy"
        else:
            url, path = self.shared_url, f"apps/{name}"
        source = {
            "url": url,
            "branch": "main",
            "path": path,
            "interval": self.args.interval,
            "secretRef": {"name": "git"},
        }
        self.world.create_app(name, source=source)

    # status

    def list_apps(self) -> list[dict[str, Any]]:
        """Every GitOpsApp of the row, in one LIST."""
        return raw_list(self.api, self.apps_path())

    def states(self) -> dict[str, AppState]:
        """Every app's state in one LIST, as a server-side Table of the CRD's printer columns.

        A few hundred bytes per app instead of several kilobytes, so reading every 0.5 s stays
        cheap at a thousand apps; the whole objects if the columns are not what this expects.
        """
        table = json.loads(
            raw_call(self.api, "GET", self.apps_path(), query={"includeObject": "None"}, accept=TABLE)
        )
        columns = [c.get("name") for c in table.get("columnDefinitions") or ()]
        if not {"Name", "Ready", "Reason", "Revision"} <= set(columns):
            return {a["metadata"]["name"]: AppState.of(a) for a in self.list_apps()}
        at = {name: columns.index(name) for name in ("Name", "Ready", "Reason", "Revision")}
        return {
            row["cells"][at["Name"]]: AppState(
                str(row["cells"][at["Ready"]] or ""),
                str(row["cells"][at["Reason"]] or ""),
                str(row["cells"][at["Revision"]] or ""),
            )
            for row in table.get("rows") or ()
        }

    def apps_path(self) -> str:
        """The REST path of the row's GitOpsApps."""
        return f"/apis/{resources.GROUP}/{resources.VERSION}/namespaces/{self.world.namespace}/gitopsapps"

    def get_app(self, name: str) -> dict[str, Any]:
        """One GitOpsApp."""
        return dict(json.loads(raw_call(self.api, "GET", f"{self.apps_path()}/{name}")))

    def wait_all(self, names: list[str], since: float, timeout: float, what: str) -> list[float]:
        """Seconds from ``since`` until each app was seen Ready at its commit (one LIST per tick)."""
        waiting = set(names)
        times: list[float] = []
        last_report = time.monotonic()
        while waiting:
            tick = time.monotonic()
            for name, state in self.states().items():
                if name in waiting and state.at(self.commits[name]):
                    waiting.discard(name)
                    times.append(tick - since)
            if not waiting:
                break
            if (
                self._operator is not None
                and self._operator.process
                and self._operator.process.poll() is not None
            ):
                raise PhaseError(f"{what}: the operator exited with {self._operator.process.returncode}")
            if tick - since > timeout:
                reasons = collections.Counter(
                    f"{state.ready}/{state.reason}"
                    for name, state in self.states().items()
                    if name in waiting
                )
                raise PhaseError(f"{what}: {len(names) - len(waiting)}/{len(names)} ready after {timeout:.0f}s; "
                                 f"the rest: {dict(reasons.most_common(4))}")  # fmt: skip
            if tick - last_report > 15:
                log(f"  {what}: {len(names) - len(waiting)}/{len(names)} ready at {tick - since:.0f}s")
                last_report = tick
            time.sleep(max(0.0, LIST_EVERY - (time.monotonic() - tick)))
        return times

    def phase_timeout(self) -> float:
        """How long a phase may take: --timeout, else max(300 s, 1.5 s per app)."""
        return self.args.timeout or max(300.0, 1.5 * self.n)

    # phases

    def cold_start(self) -> None:
        """Start the operator with every app already there; time until each is Ready at its commit."""
        log(f"N={self.n}: cold start: starting `gitward run`")
        self.row.log_path = self.root / "operator.log"
        self._operator = OperatorProcess(
            Path(self.kubeconfig),
            self.operator_namespace,
            self.root / "cache",
            self.row.log_path,
            *self.args.operator_arg,
        )
        started, started_wall = time.monotonic(), time.time()
        self._operator.start()
        names = [app_name(i) for i in range(self.n)] + [own_name(k) for k in range(self.args.own_apps)]
        try:
            times = self.wait_all(names, started, self.phase_timeout(), "cold start")
        finally:
            own, children = cpu_seconds(self.pid)
            self.row.cold_cpu = own + children
            self.row.rss_cold = rss_mib(self.pid)
            self.row.cold_requests = counter_by_label(
                self.operator.metrics(), "gitward_kube_requests", "verb"
            )
        self.row.cold = times  # every app, own-repository ones included: the operator started them all
        self.row.cold_created, self.row.cold_available = self.deployment_times(started_wall)

    def deployment_times(self, since: float) -> tuple[list[float], list[float]]:
        """When each Deployment was created (seconds after ``since``), and how long until it was Available.

        From the API server's timestamps (whole seconds): the first is the operator's part, the
        second the cluster's (kube-controller-manager, scheduler, kwok).
        """
        created, available = [], []
        for deployment in raw_list(self.api, f"/apis/apps/v1/namespaces/{self.world.namespace}/deployments"):
            born = dt.datetime.fromisoformat(deployment["metadata"]["creationTimestamp"]).timestamp()
            created.append(born - since)
            for condition in (deployment.get("status") or {}).get("conditions") or ():
                if condition.get("type") == "Available" and condition.get("status") == "True":
                    ready = dt.datetime.fromisoformat(condition["lastTransitionTime"]).timestamp()
                    available.append(ready - born)
        return created, available

    def routes(self) -> tuple[Route, list[Route]] | None:
        """The shared repository's route and each own repository's, or None without the new webhook."""
        route_token = load_route_token()
        if route_token is None:
            return None
        shared = Route(
            self.shared_url, f"/hook/{route_token(WEBHOOK_SECRET, urls.parse(self.shared_url).identity)}"
        )
        own = [
            Route(url, f"/hook/{route_token(WEBHOOK_SECRET, urls.parse(url).identity)}")
            for url in (self.own_url(k) for k in range(self.args.own_apps))
        ]
        shown = (self.get_app(app_name(0)).get("status") or {}).get("webhookPath")
        if shown and shown != shared.path:
            self.row.notes.append(
                f"status.webhookPath {shown} is not route_token's {shared.path}; using status"
            )
            shared.path = shown
        return shared, own

    def one_commit(self, routes: tuple[Route, list[Route]] | None) -> None:
        """One commit for every app, one webhook; time until each app is Ready at it."""
        log(f"N={self.n}: one commit changing every app's ConfigMap")
        files = {
            f"apps/{app_name(i)}/config.yaml": app_manifests(app_name(i), 2)["config.yaml"]
            for i in range(self.n)
        }
        commit = commit_all(self.world.work, files, self.world, "scale: every app at revision 2")
        cpu_before = sum(cpu_seconds(self.pid))
        self.world.work.push()
        pushed = time.monotonic()
        self.commits.update({app_name(i): commit for i in range(self.n)})
        if routes is None:
            self.row.commit_trigger = "poll (no per-repository webhook in this tree)"
        else:
            status, seconds = routes[0].post(self.operator.port, commit)
            self.row.commit_trigger = f"one webhook, answered {status} in {seconds * 1000:.0f} ms"
            if status != 202:
                self.row.notes.append(f"the shared repository's webhook was answered {status}, not 202")
        timeout = self.phase_timeout() + parse_duration(self.args.interval)
        try:
            self.row.commit = self.wait_all(
                [app_name(i) for i in range(self.n)], pushed, timeout, "one commit"
            )
        finally:
            self.row.commit_cpu = sum(cpu_seconds(self.pid)) - cpu_before

    def pushes(self, routes: tuple[Route, list[Route]] | None) -> None:
        """Commits to the push app's own repository, one at a time, each with its webhook; time each."""
        if routes is None or not self.own:
            return
        log(f"N={self.n}: {self.args.pushes} pushes to {own_name(0)}'s own repository, the other apps idle")
        work, route = self.own[0], routes[1][0]
        for revision in range(2, 2 + self.args.pushes):
            commit = commit_all(
                work, self.deploy_files(own_name(0), revision), self.world, f"revision {revision}"
            )
            work.push()
            pushed = time.monotonic()
            status, _ = route.post(self.operator.port, commit)
            if status != 202:
                self.row.notes.append(f"push {revision - 1}: the webhook was answered {status}")
            deadline = pushed + 60
            while not AppState.of(self.get_app(own_name(0))).at(commit):
                if time.monotonic() > deadline:
                    raise PhaseError(f"push {revision - 1}: {own_name(0)} not applied 60s after the push")
                time.sleep(GET_EVERY)
            self.row.push.append(time.monotonic() - pushed)
            self.commits[own_name(0)] = commit
            time.sleep(0.2)

    def hook_answers(self, routes: tuple[Route, list[Route]] | None) -> None:
        """Authenticated webhook requests, paced within each route's rate limit; time each answer."""
        if routes is None or not routes[1]:
            return
        shared, own = routes
        rate = min(self.args.hook_rate, float(len(own)))  # each route's bucket refills at 1/s
        heads = {r.path: self.commits[own_name(k)] for k, r in enumerate(own)}
        heads[shared.path] = self.commits[app_name(0)] if self.n else ""
        log(
            f"N={self.n}: {self.args.hook_requests} webhook requests at {rate:.0f}/s over {len(own)} + 1 routes"
        )
        time.sleep(10)  # the push phase may have spent its route's burst: let it refill
        started = time.monotonic()
        for i in range(self.args.hook_requests):
            time.sleep(max(0.0, started + i / rate - time.monotonic()))
            route = shared if i % 40 == 39 else own[i % len(own)]
            status, seconds = route.post(self.operator.port, heads[route.path])
            self.row.hook.append(seconds)
            self.row.hook_codes[status] += 1

    def idle(self) -> None:
        """A window with nothing new: the operator's CPU, its API requests, and every client's writes."""
        interval = parse_duration(self.args.interval)
        window = self.args.idle_intervals * interval
        log(
            f"N={self.n}: idle for {window:.0f}s ({self.args.idle_intervals:g} intervals), settling {self.args.settle:.0f}s first"
        )
        time.sleep(self.args.settle)
        pid = self.pid
        text0, server0, cpu0 = self.operator.metrics(), apiserver_requests(self.api), cpu_seconds(pid)
        started = time.monotonic()
        time.sleep(window)
        cpu1, server1, text1 = cpu_seconds(pid), apiserver_requests(self.api), self.operator.metrics()
        elapsed = time.monotonic() - started
        kube0 = counter_by_label(text0, "gitward_kube_requests", "verb")
        kube1 = counter_by_label(text1, "gitward_kube_requests", "verb")
        kube = None
        if kube0 is not None and kube1 is not None:
            kube = {verb: kube1.get(verb, 0) - kube0.get(verb, 0) for verb in set(kube0) | set(kube1)}
        drift0 = counter_by_label(text0, "gitward_drift_checks", "kind") or {}
        drift1 = counter_by_label(text1, "gitward_drift_checks", "kind")
        drift = None
        if drift1 is not None:
            drift = {kind: drift1.get(kind, 0) - drift0.get(kind, 0) for kind in set(drift0) | set(drift1)}
        self.row.idle = Idle(
            window=elapsed,
            intervals=elapsed / interval,
            apps=self.n + self.args.own_apps,
            reconciles=reconciles_finished(text1) - reconciles_finished(text0),
            cpu=cpu1[0] - cpu0[0],
            children_cpu=cpu1[1] - cpu0[1],
            kube=kube,
            apiserver_writes=write_categories(server1 - server0),
            drift_checks=drift,
        )
        moved = [name for name, state in self.states().items() if not state.at(self.commits[name])]
        if moved:
            self.row.notes.append(
                f"after the idle window {len(moved)} app(s) were not Ready at their commit: {moved[:5]}"
            )

    def run(self) -> Row:
        """Every phase in order; a phase that fails ends the row (with a note), the peak RSS is read anyway."""
        try:
            self.setup()
            self.cold_start()
            routes = self.routes()
            self.one_commit(routes)
            self.pushes(routes)
            self.hook_answers(routes)
            self.idle()
        except (PhaseError, OSError, client.ApiException) as error:  # the row ends here; the next one runs
            log(f"N={self.n}: {type(error).__name__}: {error}")
            self.row.notes.append(f"{type(error).__name__}: {str(error)[:300]}")
            self.row.incomplete = True
        finally:
            if self._operator is not None and self._operator.process is not None:
                if self._operator.process.poll() is None:
                    self.row.rss = rss_mib(self.pid)
                    self.row.rss_now = rss_mib(self.pid, "VmRSS")
                else:
                    self.row.notes.append(f"the operator exited with {self._operator.process.returncode}")
        return self.row

    # cleanup

    def close(self) -> None:
        """Stop the operator; unless --keep, remove the row's apps, tenant and namespaces."""
        if self._operator is not None:
            self._operator.stop()
        if self.row.log_path is not None and self.row.log_path.exists():
            self.row.notes.extend(scan_log(self.row.log_path))
        if self.args.keep or self._world is None:
            return
        # The operator is gone, so nothing will run the apps' finalizers: drop them, then the namespaces.
        with contextlib.suppress(client.ApiException, json.JSONDecodeError), ThreadPoolExecutor(8) as pool:
            names = [a["metadata"]["name"] for a in self.list_apps()]
            list(pool.map(self.drop_finalizer, names))
        self.world.cleanup()
        with contextlib.suppress(client.ApiException):
            client.CoreV1Api(self.api).delete_namespace(self.operator_namespace)

    def drop_finalizer(self, name: str) -> None:
        """Remove gitward's finalizer from an app (the operator that would run it has stopped)."""
        with contextlib.suppress(client.ApiException):
            raw_call(self.api, "PATCH", f"{self.apps_path()}/{name}", body={"metadata": {"finalizers": None}},
                     content_type="application/merge-patch+json")  # fmt: skip

    def namespaces(self) -> list[str]:
        """The namespaces the row made."""
        return [self.operator_namespace] + ([self._world.namespace] if self._world else [])


def scan_log(path: Path) -> list[str]:
    """What the operator logged as errors or warnings, counted by message (first few)."""
    counts: collections.Counter[str] = collections.Counter()
    tracebacks = 0
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("Traceback"):
            tracebacks += 1
        try:
            entry = json.loads(line)
        except ValueError:
            if re.search(r"\b(ERROR|WARNING|CRITICAL)\b|failed|[Ee]xception|[Tt]imed out|[Ee]rror:", line):
                counts[re.sub(r"^\[?\d{4}-\d\d-\d\d[ T][\d:.,]+Z?\]? *", "", line)[:160]] += 1
            continue
        if isinstance(entry, dict) and str(entry.get("level", "")).lower() in (
            "error",
            "warning",
            "critical",
        ):
            detail = entry.get("error") or entry.get("reason") or ""
            counts[f"{entry.get('level')}: {entry.get('event')} {detail}"[:160]] += 1
    notes = [f"operator log: {n}x {message}" for message, n in counts.most_common(5)]
    if tracebacks:
        notes.append(f"operator log: {tracebacks} traceback(s)")
    return notes


# --- printing ---------------------------------------------------------------------------------------


def spread(
    values: list[float], scale: float = 1.0, unit: str = "s", qs: tuple[int, ...] = (50, 95), digits: int = 1
) -> str:
    if not values:
        return "n/a"
    parts = [f"p{q} {percentile(values, q) * scale:.{digits}f}" for q in qs]
    return "  ".join([*parts, f"max {max(values) * scale:.{digits}f} {unit}"])


def print_row(row: Row) -> None:
    def line(label: str, text: str) -> None:
        print(f"  {label:<34} {text}")

    print(
        f"\n== N = {row.apps} apps on one shared repository (+{row.own_apps} with their own), 4 objects each =="
    )
    cold = f"all {len(row.cold)} Ready at {max(row.cold):.1f} s" if row.cold else "not all Ready"
    if row.cold_cpu is not None:
        cold += f"; operator CPU {row.cold_cpu:.1f} s"
    if row.cold_requests is not None:
        cold += "; its API requests: " + (by_verb(row.cold_requests) or "none")
    line("cold start -> all Ready", f"{spread(row.cold)}   ({cold})")
    if row.cold_created:
        line(
            "  Deployments created (operator)",
            f"{spread(row.cold_created, digits=0)}   (API server timestamps, whole s)",
        )
        line(
            "  created -> Available (cluster)",
            f"{spread(row.cold_available, digits=0)}   (kube-controller-manager, scheduler, kwok)",
        )
    commit = f"all Ready at {max(row.commit):.1f} s" if row.commit else "not all Ready"
    if row.commit_cpu is not None:
        commit += f"; operator CPU {row.commit_cpu:.1f} s"
    line("one commit -> all Ready", f"{spread(row.commit)}   ({commit}; {row.commit_trigger or 'n/a'})")
    line(f"push -> applied ({len(row.push)} pushes)", spread(row.push, qs=(50, 99), digits=2))
    codes = " ".join(f"{code} x{n}" for code, n in sorted(row.hook_codes.items())) or "-"
    line(
        f"webhook answer ({len(row.hook)} requests)",
        f"{spread(row.hook, 1000, 'ms', (50, 99))}   (answers: {codes})",
    )
    idle = row.idle
    if idle is None:
        line("no-op poll", "n/a")
    else:
        line("no-op poll", f"{idle.window:.0f} s window = {idle.intervals:.2f} intervals, {idle.apps} apps, "
                           f"{idle.reconciles} reconciles finished")  # fmt: skip
        per_reconcile = (
            (idle.cpu + idle.children_cpu) * 1000 / idle.reconciles if idle.reconciles else math.nan
        )
        line("  operator CPU", f"{idle.cpu_ms_per_app_interval:.2f} ms per app per interval ({idle.cpu:.2f} s own + "
                               f"{idle.children_cpu:.2f} s children; {per_reconcile:.1f} ms per reconcile)")  # fmt: skip
        if idle.kube is None:
            line("  operator API requests", "n/a (no gitward_kube_requests_total in its /metrics)")
        else:
            reads, writes = idle.kube_sum(READ_VERBS) or 0, idle.kube_sum(WRITE_VERBS) or 0
            per_poll = (
                f"{reads / idle.reconciles:.2f} reads per reconcile" if idle.reconciles else "no reconciles"
            )
            line(
                "  operator API requests",
                f"writes {writes:.0f}, reads {reads:.0f} ({per_poll}; {by_verb(idle.kube) or 'none'})",
            )
        if idle.drift_checks is not None:
            fast, full = idle.drift_checks.get("fast", 0), idle.drift_checks.get("full", 0)
            line(
                "  drift checks (in the above)",
                f"{fast:.0f} from watched fingerprints, {full:.0f} full (dry-run); "
                f"{(fast + full) / idle.apps / idle.intervals:.2f} per app per interval",
            )
        writes_seen = idle.apiserver_writes
        shown = ", ".join(f"{k} {v}" for k, v in sorted(writes_seen.items())) or "none"
        line("  API server writes, all clients", f"{sum(writes_seen.values())} ({shown})")
    rss = "n/a" if row.rss is None else f"{row.rss:.1f} MiB"
    if row.rss is not None and row.rss_cold is not None and row.rss_now is not None:
        rss += f"   (peak after the cold start {row.rss_cold:.1f} MiB; resident at the end {row.rss_now:.1f} MiB)"
    line("peak RSS", rss)
    for note in row.notes:
        print(f"  note: {note}")
    if row.log_path is not None:
        print(f"  operator log: {row.log_path} (removed at the end unless --keep)")


def by_verb(counts: dict[str, float]) -> str:
    return ", ".join(f"{verb} {n:.0f}" for verb, n in sorted(counts.items()) if n)


def verdict(value: float | None, target: float) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return "pass" if value <= target else "FAIL"


def tree_state() -> str:
    """Which gitward ran: the commit, and whether operator/ had changes not committed yet."""

    def git(*args: str) -> str:
        result = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False)
        return result.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = [line for line in git("status", "--porcelain", "--", "operator").splitlines() if line]
    return f"gitward at {head}" + (
        f" with {len(changed)} uncommitted change(s) in operator/" if changed else ""
    )


def print_summary(rows: list[Row], tree: str) -> None:
    metrics: list[tuple[str, str, str, Callable[[Row], float | None], float, str]] = [
        ("cold start -> all Ready", "<= 120 s", f"{FLUX_COLD_S:.0f} s (16 cores)",
         lambda r: max(r.cold) if r.cold and len(r.cold) == r.apps + r.own_apps else None, COLD_TARGET_S, "{:.1f} s"),
        ("one commit -> all Ready", "<= 60 s", "-",
         lambda r: max(r.commit) if r.commit and len(r.commit) == r.apps else None, COMMIT_TARGET_S, "{:.1f} s"),
        ("no-op poll: operator API writes", "0", "-",
         lambda r: r.idle.kube_sum(WRITE_VERBS) if r.idle else None, 0.0, "{:.0f}"),
        ("no-op poll: API server writes (*)", "0", "-",
         lambda r: r.idle.gitward_writes_seen if r.idle else None, 0.0, "{:.0f}"),
        ("no-op poll: CPU per app per interval", "<= 5 ms", "-",
         lambda r: r.idle.cpu_ms_per_app_interval if r.idle else None, IDLE_CPU_TARGET_MS, "{:.2f} ms"),
        ("peak RSS", "<= 150 MiB", f"{FLUX_RSS_MIB:.0f} MiB", lambda r: r.rss, RSS_TARGET_MIB, "{:.1f} MiB"),
        ("webhook answer p99", "<= 100 ms", "-",
         lambda r: percentile(r.hook, 99) * 1000 if r.hook else None, HOOK_P99_TARGET_MS, "{:.1f} ms"),
        ("push -> applied p50", "<= 2 s", "-",
         lambda r: percentile(r.push, 50) if r.push else None, PUSH_P50_TARGET_S, "{:.2f} s"),
    ]  # fmt: skip
    columns = [f"N={r.apps}" for r in rows]
    print("\n== summary: the issue's targets (set for 1000 apps x 4 objects) and Flux's anchor ==")
    print(f"{'':<38} {'target':>11} {'Flux (1000)':>17} " + " ".join(f"{c:>18}" for c in columns))
    for name, target_text, anchor, value_of, target, fmt in metrics:
        cells = []
        for row in rows:
            value = value_of(row)
            shown = "n/a" if value is None or math.isnan(value) else fmt.format(value)
            cells.append(f"{shown + ' ' + verdict(value, target):>18}")
        print(f"{name:<38} {target_text:>11} {anchor:>17} " + " ".join(cells))
    print(
        "(*) every client's writes as the API server counted them, leases and node status (kwok's) left out."
    )
    print(
        "Flux: 1000 Kustomizations in 4 min 16 s on a 16-core runner, peak RSS 175 MiB (its published figures);"
        f" this machine: {os.cpu_count()} cores. Targets are for N=1000; smaller rows are indicative."
    )
    print(f"Operator: {tree}.")


# --- main -------------------------------------------------------------------------------------------


def wait_namespaces_gone(api: client.ApiClient, names: list[str], timeout: float) -> None:
    def gone() -> bool:
        remaining = {n["metadata"]["name"] for n in raw_list(api, "/api/v1/namespaces")}
        return not remaining.intersection(names)

    log(f"waiting for the previous row's namespaces to be deleted: {', '.join(names)}")
    try:
        wait_for(gone, timeout, "namespace deletion", every=2)
    except PhaseError:
        log(f"namespaces still terminating after {timeout:.0f}s; going on (they may load the next row)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--apps", default="10,100,1000", help="comma-separated app counts, one row each")
    add("--interval", default="30s", help="spec.source.interval of every app")
    add("--pushes", type=int, default=20, help="pushes to one app's own repository")
    add(
        "--own-apps",
        type=int,
        default=10,
        help="apps with their own repository, besides N (the first takes the pushes; all are webhook routes)",
    )
    add("--hook-requests", type=int, default=200, help="webhook requests timed for their answer")
    add("--hook-rate", type=float, default=10.0, help="webhook requests per second (at most 1/s per route)")
    add("--idle-intervals", type=float, default=2.0, help="length of the no-op window, in intervals (>= 2)")
    add("--settle", type=float, default=10.0, help="seconds to wait before the no-op window")
    add("--timeout", type=float, default=0.0, help="seconds a phase may take (default: max(300, 1.5 N))")
    add(
        "--operator-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra `gitward run` argument (repeatable), e.g. --operator-arg=--tenant-concurrency=16",
    )
    add("--keep", action="store_true", help="leave namespaces, apps, logs, repositories and the cluster")
    args = parser.parse_args()  # fmt: skip
    args.sizes = [int(n) for n in args.apps.split(",") if n.strip()]
    if not args.sizes or min(args.sizes) < 1:
        parser.error("--apps needs one or more counts >= 1")
    args.own_apps = max(1, args.own_apps)
    try:
        parse_duration(args.interval)
    except ValueError as error:
        parser.error(f"--interval: {error}")
    return args


def run_rows(args: argparse.Namespace, root: Path, rows: list[Row]) -> None:
    """Every row on one cluster and one git server; kwok nodes added here are removed at the end."""
    with cluster(keep=args.keep) as kubeconfig:
        api = kube_config.new_client_from_config(config_file=kubeconfig)  # the harness's own client
        created_nodes: list[str] = []
        try:
            install_crds(api)
            (root / "srv").mkdir()
            with HttpsGitServer(root / "srv", root / "tls") as server:
                previous: list[str] = []
                for index, n in enumerate(args.sizes):
                    if previous and not args.keep:
                        wait_namespaces_gone(api, previous, max(120.0, 0.5 * max(args.sizes)))
                    ensure_kwok_capacity(api, n + args.own_apps + 10, created_nodes)
                    row_root = root / f"row{index}-n{n}"
                    row_root.mkdir()
                    bench = Bench(args, n, kubeconfig=kubeconfig, api=api, server=server, root=row_root)
                    try:
                        rows.append(bench.run())
                    finally:
                        bench.close()
                        previous = bench.namespaces()
                    print_row(rows[-1])
                    sys.stdout.flush()
        finally:
            if not args.keep:
                for name in created_nodes:
                    with contextlib.suppress(client.ApiException):
                        client.CoreV1Api(api).delete_node(name)
            api.close()


def interrupted(signum: int, frame: object) -> None:
    """SIGTERM (and SIGINT, even when started with it ignored) unwind like Ctrl-C: everything is stopped."""
    del frame
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    rows: list[Row] = []
    tree = tree_state()  # at the start: the tree may change while the rows run
    log(f"operator: {tree}")
    root = Path(tempfile.mkdtemp(prefix="gitward-scale-"))
    try:
        run_rows(args, root, rows)
    except KeyboardInterrupt as stop:
        log(f"interrupted ({stop}): everything this run started has been stopped")
        return 130
    finally:
        if args.keep:
            log(f"--keep: repositories, caches and operator logs are under {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print_summary(rows, tree)
    return 1 if any(row.incomplete for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
