"""Pod Security Standards (baseline and restricted), checked on every pod template before apply.

The namespace is also labelled for Pod Security Admission, but admission
only sees Pods: a Deployment whose template breaks the level is accepted
and then silently never gets pods. Checking templates here refuses the
commit instead, with the reason. The checks follow the published standard
for the fields that matter most; admission remains the backstop.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from gitward.api.resources import PodSecurityLevel

BASELINE_CAPABILITIES = frozenset(
    {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
     "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
)  # fmt: skip
RESTRICTED_VOLUME_TYPES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)
SAFE_SYSCTLS = frozenset(
    {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
     "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
     "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
     "net.ipv4.tcp_keepalive_probes"}
)  # fmt: skip


def _containers(spec: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for container in spec.get(field) or ():
            if isinstance(container, Mapping):
                yield container


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _baseline(spec: Mapping[str, Any]) -> Iterator[str]:
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field) is True:
            yield f"{field} is not allowed"
    pod_context = _mapping(spec.get("securityContext"))
    for sysctl in pod_context.get("sysctls") or ():
        name = _mapping(sysctl).get("name")
        if name not in SAFE_SYSCTLS:
            yield f"sysctl {name!r} is not allowed"
    if _mapping(pod_context.get("seccompProfile")).get("type") == "Unconfined":
        yield "seccompProfile Unconfined is not allowed"
    for volume in spec.get("volumes") or ():
        if isinstance(volume, Mapping) and "hostPath" in volume:
            yield f"hostPath volume {volume.get('name')!r} is not allowed"
    for container in _containers(spec):
        name = container.get("name")
        context = _mapping(container.get("securityContext"))
        if context.get("privileged") is True:
            yield f"container {name!r} is privileged"
        added = set(_mapping(context.get("capabilities")).get("add") or ())
        if extra := sorted(str(c) for c in added - BASELINE_CAPABILITIES):
            yield f"container {name!r} adds capabilities {', '.join(extra)}"
        if context.get("procMount") not in (None, "Default"):
            yield f"container {name!r} sets procMount {context.get('procMount')!r}"
        if _mapping(context.get("seccompProfile")).get("type") == "Unconfined":
            yield f"container {name!r} sets seccompProfile Unconfined"
        if _mapping(context.get("windowsOptions")).get("hostProcess") is True:
            yield f"container {name!r} is a Windows host process"
        for port in container.get("ports") or ():
            if isinstance(port, Mapping) and port.get("hostPort"):
                yield f"container {name!r} uses hostPort {port.get('hostPort')}"


def _restricted(spec: Mapping[str, Any]) -> Iterator[str]:
    pod_context = _mapping(spec.get("securityContext"))
    for volume in spec.get("volumes") or ():
        if not isinstance(volume, Mapping):
            continue
        kinds = set(volume) - {"name"}
        if kinds and not kinds <= RESTRICTED_VOLUME_TYPES:
            types = ", ".join(sorted(kinds))
            yield f"volume {volume.get('name')!r} of type {types} is not allowed under restricted"
    pod_non_root = pod_context.get("runAsNonRoot")
    pod_seccomp = _mapping(pod_context.get("seccompProfile")).get("type")
    if pod_context.get("runAsUser") == 0:
        yield "the pod runs as root (runAsUser: 0)"
    for container in _containers(spec):
        name = container.get("name")
        context = _mapping(container.get("securityContext"))
        non_root = context.get("runAsNonRoot", pod_non_root)
        if non_root is not True:
            yield f"container {name!r} must set runAsNonRoot: true"
        if context.get("runAsUser") == 0:
            yield f"container {name!r} runs as root (runAsUser: 0)"
        if context.get("allowPrivilegeEscalation") is not False:
            yield f"container {name!r} must set allowPrivilegeEscalation: false"
        capabilities = _mapping(context.get("capabilities"))
        if "ALL" not in (capabilities.get("drop") or ()):
            yield f"container {name!r} must drop ALL capabilities"
        if extra := sorted(str(c) for c in set(capabilities.get("add") or ()) - {"NET_BIND_SERVICE"}):
            yield f"container {name!r} may add only NET_BIND_SERVICE, not {', '.join(extra)}"
        seccomp = _mapping(context.get("seccompProfile")).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            yield f"container {name!r} must use seccompProfile RuntimeDefault or Localhost"


def violations(spec: Mapping[str, Any], level: PodSecurityLevel) -> list[str]:
    """Every way a pod spec breaks ``level`` (empty when it complies)."""
    if level is PodSecurityLevel.PRIVILEGED:
        return []
    found = list(_baseline(spec))
    if level is PodSecurityLevel.RESTRICTED:
        found.extend(_restricted(spec))
    return found
