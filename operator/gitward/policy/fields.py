"""Fields of allowed kinds that reach outside the tenant, refused unless the tenant's policy opts in.

A kind being allowed says nothing about what its fields can do. Each rule
here names a field that lets a namespaced object act beyond its namespace,
and the opt-in in ``GitOpsTenant.spec.policy`` that an admin can set:

- Service: only ``ClusterIP`` (and headless) by default (``services.types``);
  ``externalIPs`` never unless ``services.allowExternalIPs`` (CVE-2020-8554);
  a LoadBalancer must limit its ``loadBalancerSourceRanges`` to CIDRs inside
  ``services.loadBalancerSourceRanges``.
- Ingress (and Gateway API routes): every host must match
  ``ingressHosts``; a rule without a host (every host) only with ``"*"``;
  controller configuration snippets are never accepted.
- Pods in any workload: ``nodeName`` (pinning past the scheduler) only with
  ``allowNodeName``; host ports only with ``allowHostPorts``; a toleration
  with an empty key and ``Exists`` (tolerate everything) only with
  ``allowTolerateAll``; ``priorityClassName`` only from ``priorityClasses``
  (``system-*`` never); gitward's own ServiceAccounts never.
- PersistentVolumeClaim: ``volumeName`` (claiming a given volume) only with
  ``allowVolumeName``; ``storageClassName`` only from ``storageClasses``.

Pure: every function takes an object and the tenant's field policy and
returns the problems it finds, all of them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from gitward.api.conditions import Reason
from gitward.api.resources import FieldPolicy
from gitward.source.allow import glob_match

RESERVED_PREFIX = "gitward-"
_SNIPPET_MARKERS = ("snippet",)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> Sequence[Any]:
    return value if isinstance(value, list) else []


def service(obj: Mapping[str, Any], policy: FieldPolicy) -> Iterator[str]:
    """Service type, external IPs and load balancer source ranges."""
    spec = _mapping(obj.get("spec"))
    kind = str(spec.get("type") or "ClusterIP")
    if kind not in policy.service_types:
        allowed = ", ".join(policy.service_types)
        yield f"spec.type {kind} is not allowed for this tenant (allowed: {allowed})"
    if _list(spec.get("externalIPs")) and not policy.allow_external_ips:
        yield "spec.externalIPs can take traffic for any address in the cluster (CVE-2020-8554); not allowed"
    if kind == "LoadBalancer" and kind in policy.service_types:
        ranges = [str(r) for r in _list(spec.get("loadBalancerSourceRanges"))]
        if not ranges and policy.load_balancer_source_ranges:
            yield "a LoadBalancer must set spec.loadBalancerSourceRanges within the tenant's allowed ranges"
        for source in ranges:
            if not _within(source, policy.load_balancer_source_ranges):
                yield f"spec.loadBalancerSourceRanges {source!r} is outside the tenant's allowed ranges"


def _within(cidr: str, allowed: Sequence[str]) -> bool:
    try:
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False
    for entry in allowed:
        try:
            outer = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            continue
        if network.version == outer.version and network.subnet_of(outer):  # type: ignore[arg-type]
            return True
    return False


def _host_allowed(host: str, policy: FieldPolicy) -> bool:
    return any(glob_match(pattern, host) or pattern == host for pattern in policy.ingress_hosts)


def ingress(obj: Mapping[str, Any], policy: FieldPolicy) -> Iterator[str]:
    """Ingress hosts and controller snippets."""
    annotations = _mapping(_mapping(obj.get("metadata")).get("annotations"))
    for key in annotations:
        if any(marker in str(key).lower() for marker in _SNIPPET_MARKERS):
            yield f"annotation {key} injects ingress-controller configuration; snippets are never accepted"
    spec = _mapping(obj.get("spec"))
    for index, rule in enumerate(_list(spec.get("rules"))):
        host = str(_mapping(rule).get("host") or "")
        if not host:
            if "*" not in policy.ingress_hosts:
                yield f"spec.rules[{index}] has no host: it would answer for every host; not allowed"
        elif not _host_allowed(host, policy):
            yield f"spec.rules[{index}].host {host!r} is not one of the tenant's hosts"
    for index, tls in enumerate(_list(spec.get("tls"))):
        for host in _list(_mapping(tls).get("hosts")):
            if not _host_allowed(str(host), policy):
                yield f"spec.tls[{index}] host {host!r} is not one of the tenant's hosts"
    if _mapping(spec.get("defaultBackend")) and "*" not in policy.ingress_hosts:
        yield "spec.defaultBackend answers for every host; not allowed"


def route(obj: Mapping[str, Any], policy: FieldPolicy) -> Iterator[str]:
    """Gateway API routes: every hostname must be the tenant's, and a route must name its hostnames."""
    hostnames = [str(h) for h in _list(_mapping(obj.get("spec")).get("hostnames"))]
    if not hostnames and "*" not in policy.ingress_hosts:
        yield "spec.hostnames is empty: the route would answer for every host of its gateway; not allowed"
    for host in hostnames:
        if not _host_allowed(host, policy):
            yield f"spec.hostnames {host!r} is not one of the tenant's hosts"


def pod(spec: Mapping[str, Any], policy: FieldPolicy) -> Iterator[str]:
    """Scheduling, host ports, priority and identity of a pod spec."""
    if spec.get("nodeName") and not policy.allow_node_name:
        yield f"nodeName {spec.get('nodeName')!r} bypasses the scheduler; not allowed"
    for index, raw in enumerate(_list(spec.get("tolerations"))):
        toleration = _mapping(raw)
        if (
            not toleration.get("key")
            and toleration.get("operator") == "Exists"
            and not policy.allow_tolerate_all
        ):
            yield f"tolerations[{index}] tolerates every taint (empty key, Exists); not allowed"
    priority = str(spec.get("priorityClassName") or "")
    if priority and (priority.startswith("system-") or priority not in policy.priority_classes):
        yield f"priorityClassName {priority!r} is not in the tenant's priority classes"
    account = str(spec.get("serviceAccountName") or spec.get("serviceAccount") or "")
    if account.startswith(RESERVED_PREFIX):
        yield f"serviceAccountName {account!r} is gitward's own; workloads never run as it"
    if not policy.allow_host_ports:
        for group in ("initContainers", "containers", "ephemeralContainers"):
            for container in _list(spec.get(group)):
                for port in _list(_mapping(container).get("ports")):
                    if _mapping(port).get("hostPort"):
                        name = _mapping(container).get("name")
                        yield f"{group} {name!r} binds hostPort {_mapping(port).get('hostPort')}; not allowed"


def claim(obj: Mapping[str, Any], policy: FieldPolicy) -> Iterator[str]:
    """A PersistentVolumeClaim may not pick a volume, and only the tenant's storage classes."""
    spec = _mapping(obj.get("spec"))
    if spec.get("volumeName") and not policy.allow_volume_name:
        yield f"spec.volumeName {spec.get('volumeName')!r} claims a given volume; not allowed"
    storage = spec.get("storageClassName")
    if storage is not None and str(storage) not in policy.storage_classes:
        yield f"spec.storageClassName {storage!r} is not in the tenant's storage classes"


def role_binding(
    obj: Mapping[str, Any], policy: FieldPolicy, namespaces: Sequence[str]
) -> Iterator[tuple[Reason, str]]:
    """Subjects only the tenant's own ServiceAccounts and listed users and groups; roles only its own."""
    role_ref = _mapping(obj.get("roleRef"))
    ref_kind, ref_name = str(role_ref.get("kind") or ""), str(role_ref.get("name") or "")
    if ref_name.startswith(RESERVED_PREFIX):
        yield (
            Reason.POLICY_VIOLATION,
            f"roleRef {ref_kind} {ref_name!r} is gitward's own; it is never bound from Git",
        )
    elif ref_kind == "ClusterRole" and ref_name not in policy.cluster_roles:
        allowed = ", ".join(policy.cluster_roles) or "none"
        yield Reason.POLICY_VIOLATION, f"binds ClusterRole {ref_name!r}; the tenant may bind only: {allowed}"
    elif ref_kind not in ("Role", "ClusterRole"):
        yield Reason.POLICY_VIOLATION, f"roleRef kind {ref_kind!r} is not a Role or ClusterRole"
    for index, raw in enumerate(_list(obj.get("subjects"))):
        subject = _mapping(raw)
        kind, name = str(subject.get("kind") or ""), str(subject.get("name") or "")
        where = f"subjects[{index}]"
        if kind == "ServiceAccount":
            namespace = str(subject.get("namespace") or "")
            if namespace and namespace not in namespaces:
                yield (
                    Reason.NAMESPACE_VIOLATION,
                    f"{where} ServiceAccount {namespace}/{name} is not in the tenant's namespaces",
                )
            if name.startswith(RESERVED_PREFIX):
                yield (
                    Reason.POLICY_VIOLATION,
                    f"{where} ServiceAccount {name!r} is gitward's own; it is never bound from Git",
                )
        elif kind == "User" and name not in policy.rbac_users:
            yield Reason.POLICY_VIOLATION, f"{where} User {name!r} is not one the tenant's policy lists"
        elif kind == "Group" and name not in policy.rbac_groups:
            yield Reason.POLICY_VIOLATION, f"{where} Group {name!r} is not one the tenant's policy lists"
        elif kind not in ("ServiceAccount", "User", "Group"):
            yield Reason.POLICY_VIOLATION, f"{where} kind {kind!r} is not a subject kind"
