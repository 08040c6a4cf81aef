"""Drift, decided from objects alone: what gitward owns of an object, whether it changed, and who changed it.

Server-side apply records, in ``metadata.managedFields``, which field
manager owns which field. Whoever changes a field gitward applied (``kubectl
edit``, ``kubectl scale``, another controller, a second ``apply``) takes it
over, so the fields gitward's manager owns, with their values, are a
fingerprint of "the object as gitward applied it": equal fingerprints mean
nothing gitward set has changed, whatever else (status, other managers'
labels) did. That makes the routine check cheap (a digest per object, kept
current by a watch), and the rare full check precise: the dry-run of the
applied revision against the live object names each changed field and the
manager that now owns it.

Users leave things alone with annotations, on the object in git or live:
``gitward.dev/reconcile: disabled`` (the whole object, as Flux's
``kustomize.toolkit.fluxcd.io/reconcile: disabled``) and
``gitward.dev/ignore-fields: spec.replicas, spec.template.spec.containers[name=app].image``
(fields, as Argo CD's ignoreDifferences): they are not drift, and an apply
to an object that exists keeps their live values.

Everything here is pure: bodies in, answers out.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gitward.api.refs import ObjectRef

FIELD_MANAGER = "gitward"
RECONCILE_ANNOTATION = "gitward.dev/reconcile"
IGNORE_FIELDS_ANNOTATION = "gitward.dev/ignore-fields"
DISABLED = "disabled"
MAX_FIELDS = 50
MAX_MANAGERS = 20
_ABSENT = object()


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What gitward's field manager owns of one object, and the values there, as one digest."""

    digest: str
    disabled: bool = False  # gitward.dev/reconcile: disabled on the live object


ABSENT = Fingerprint("")  # an object known to be missing (a deletion already reported)


@dataclass(frozen=True, slots=True)
class Drifted:
    """One object that no longer matches the applied revision."""

    ref: ObjectRef
    action: str  # "modified" or "deleted"
    fields: tuple[str, ...] = ()
    managers: tuple[str, ...] = ()

    def to_record(self) -> dict[str, Any]:
        """The entry in a GitOpsRevision's ``drift``."""
        entry: dict[str, Any] = {
            "group": self.ref.group,
            "kind": self.ref.kind,
            "namespace": self.ref.namespace,
            "name": self.ref.name,
            "action": self.action,
        }
        if self.fields:
            entry["fields"] = [f[:512] for f in self.fields[:MAX_FIELDS]]
        if self.managers:
            entry["managers"] = [m[:256] for m in self.managers[:MAX_MANAGERS]]
        return entry

    def describe(self) -> str:
        """One line for a condition message or an Event."""
        if self.action == "deleted":
            return f"{self.ref.kind}/{self.ref.name} was deleted"
        fields = ", ".join(self.fields[:5]) + (" ..." if len(self.fields) > 5 else "")  # noqa: PLR2004
        who = f" by {', '.join(self.managers)}" if self.managers else ""
        return f"{self.ref.kind}/{self.ref.name} {fields or 'changed'}{who}"


def _annotations(body: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return ((body or {}).get("metadata") or {}).get("annotations") or {}


def disabled(*bodies: Mapping[str, Any] | None) -> bool:
    """Whether any of the bodies (the manifest, the live object) says ``gitward.dev/reconcile: disabled``."""
    return any(str(_annotations(b).get(RECONCILE_ANNOTATION, "")).strip() == DISABLED for b in bodies)


def ignored_fields(*bodies: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The field paths listed in ``gitward.dev/ignore-fields`` of the bodies (comma or newline separated)."""
    found: list[str] = []
    for body in bodies:
        raw = str(_annotations(body).get(IGNORE_FIELDS_ANNOTATION, ""))
        found.extend(p.strip() for p in re.split(r"[,\n]", raw) if p.strip())
    return tuple(dict.fromkeys(found))


def _under(path: str, prefixes: Sequence[str]) -> bool:
    return any(path == p or path.startswith((p + ".", p + "[")) for p in prefixes)


# -- managedFields ------------------------------------------------------------------------------


def _fields_of(body: Mapping[str, Any], manager: str) -> list[Mapping[str, Any]]:
    entries = ((body.get("metadata") or {}).get("managedFields")) or ()
    return [
        e.get("fieldsV1") or {}
        for e in entries
        if isinstance(e, Mapping)
        and e.get("manager") == manager
        and e.get("operation") == "Apply"
        and not e.get("subresource")
    ]


def _selector(keys: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in keys.items())


def _decoded(raw: str) -> Any:  # noqa: ANN401 - a JSON value from a fieldsV1 key
    try:
        return json.loads(raw)
    except ValueError:
        return _ABSENT


def owned(fields: Mapping[str, Any], node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:  # noqa: ANN401
    """The leaves of a ``fieldsV1`` tree, as readable paths, with the object's values there.

    ``f:name`` is a map key, ``k:{...}`` a list item chosen by its keys
    (shown as ``[name=web]``), ``v:...`` a set member, ``i:N`` a list index;
    ``.`` means the node itself (yielded as its presence).
    """
    for key, sub in fields.items():
        if key == ".":
            yield (prefix or "."), node is not _ABSENT
            continue
        kind, _, raw = key.partition(":")
        child: Any = _ABSENT
        if kind == "f":
            path = f"{prefix}.{raw}" if prefix else raw
            if isinstance(node, Mapping) and raw in node:
                child = node[raw]
        elif kind == "k":
            wanted = _decoded(raw)
            if not isinstance(wanted, Mapping):
                continue
            path = f"{prefix}[{_selector(wanted)}]"
            if isinstance(node, list):
                child = next(
                    (
                        item
                        for item in node
                        if isinstance(item, Mapping) and all(item.get(k) == v for k, v in wanted.items())
                    ),
                    _ABSENT,
                )
        elif kind == "v":
            value = _decoded(raw)
            if value is _ABSENT:
                continue
            path = f"{prefix}[{json.dumps(value, sort_keys=True)}]"
            child = value if isinstance(node, list) and value in node else _ABSENT
        elif kind == "i":
            path = f"{prefix}[{raw}]"
            if isinstance(node, list) and raw.isdigit() and int(raw) < len(node):
                child = node[int(raw)]
        else:
            continue
        if isinstance(sub, Mapping) and sub:
            yield from owned(sub, child, path)
        else:
            yield path, (None if child is _ABSENT else child)


def fingerprint(body: Mapping[str, Any]) -> Fingerprint:
    """The digest of the fields gitward's manager owns in ``body`` with their values, and of its content.

    The content (everything but ``metadata`` and ``status``) counts whoever owns it, so a change
    back to git's values by hand shows too; of ``metadata`` only what gitward owns counts, so
    the annotations controllers keep writing (a Deployment's revision) do not.
    """
    pairs: list[tuple[str, Any]] = []
    for fields in _fields_of(body, FIELD_MANAGER):
        pairs.extend(owned(fields, body))
    content = {k: v for k, v in body.items() if k not in ("metadata", "status")}
    canonical = json.dumps([sorted(pairs, key=lambda p: p[0]), content], sort_keys=True, default=str)
    return Fingerprint(hashlib.sha256(canonical.encode()).hexdigest()[:32], disabled(body))


def _owners(live: Mapping[str, Any]) -> list[tuple[str, str, set[str]]]:
    """(manager, time, paths it owns) for every field manager but gitward's own apply, newest first."""
    owners = []
    for entry in (live.get("metadata") or {}).get("managedFields") or ():
        if not isinstance(entry, Mapping) or entry.get("subresource") == "status":
            continue
        manager = str(entry.get("manager") or "")
        if manager == FIELD_MANAGER and entry.get("operation") == "Apply":
            continue
        paths = {path for path, _ in owned(entry.get("fieldsV1") or {}, live)}
        label = manager if entry.get("operation") == "Apply" else f"{manager} ({entry.get('operation')})"
        owners.append((label, str(entry.get("time") or ""), paths))
    owners.sort(key=lambda o: o[1], reverse=True)
    return owners


def managers_of(live: Mapping[str, Any], paths: Sequence[str]) -> tuple[str, ...]:
    """The field managers that own ``paths`` in ``live``; else whoever wrote last (not gitward)."""
    owners = _owners(live)
    found = [
        label
        for label, _, owned_paths in owners
        if any(p == o or _under(o, [p]) or _under(p, [o]) for p in paths for o in owned_paths)
    ]
    if not found and owners:
        found = [owners[0][0]]
    return tuple(dict.fromkeys(found))


# -- comparing the applied revision with the live object ----------------------------------------

_VOLATILE = ("resourceVersion", "managedFields", "generation", "creationTimestamp", "uid")


def comparable(body: Mapping[str, Any] | None) -> dict[str, Any]:
    """An object without what the server changes on every write, to compare two versions of it."""
    if body is None:
        return {}
    clean = {k: v for k, v in body.items() if k != "status"}
    clean["metadata"] = {k: v for k, v in (body.get("metadata") or {}).items() if k not in _VOLATILE}
    return clean


def _named(items: Sequence[Any]) -> bool:
    names = [i.get("name") for i in items if isinstance(i, Mapping)]
    return (
        len(names) == len(items) and all(isinstance(n, str) for n in names) and len(set(names)) == len(names)
    )


def differences(want: Any, have: Any, prefix: str = "") -> Iterator[str]:  # noqa: ANN401
    """Paths where ``have`` differs from ``want`` (lists of named items matched by name)."""
    if isinstance(want, Mapping) and isinstance(have, Mapping):
        for key in sorted(set(want) | set(have), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in want or key not in have:
                yield path
            else:
                yield from differences(want[key], have[key], path)
    elif isinstance(want, list) and isinstance(have, list):
        if _named(want) and _named(have):
            mine = {i["name"]: i for i in want}
            theirs = {i["name"]: i for i in have}
            for name in sorted(set(mine) | set(theirs)):
                path = f"{prefix}[name={name}]"
                if name not in mine or name not in theirs:
                    yield path
                else:
                    yield from differences(mine[name], theirs[name], path)
        elif len(want) != len(have):
            yield prefix
        else:
            for index, (a, b) in enumerate(zip(want, have, strict=True)):
                yield from differences(a, b, f"{prefix}[{index}]")
    elif want != have:
        yield prefix


def drifted(
    ref: ObjectRef,
    manifest: Mapping[str, Any],
    would: Mapping[str, Any] | None,
    live: Mapping[str, Any] | None,
) -> Drifted | None:
    """How ``live`` differs from what applying ``manifest`` would make of it (``would``, a dry-run)."""
    if disabled(manifest, live):
        return None
    if live is None:
        return Drifted(ref, "deleted")
    if would is None:
        return None
    ignored = ignored_fields(manifest, live)
    fields = tuple(
        p for p in differences(comparable(would), comparable(live)) if not _under(p, ignored) and p
    )
    if not fields:
        return None
    return Drifted(ref, "modified", fields, managers_of(live, fields))


# -- fields the user keeps: the live value is applied back ----------------------------------------

_SEGMENT = re.compile(r"([^.\[\]]+)|\[([^\]]*)\]")


def _segments(path: str) -> list[tuple[str, str]]:
    """``a.b[name=x].c`` as [("key","a"), ("key","b"), ("select","name=x"), ("key","c")]."""
    return [("key", key) if key else ("select", select) for key, select in _SEGMENT.findall(path)]


def _step(node: Any, segment: tuple[str, str]) -> Any:  # noqa: ANN401
    kind, value = segment
    if kind == "key":
        return node.get(value, _ABSENT) if isinstance(node, Mapping) else _ABSENT
    if not isinstance(node, list):
        return _ABSENT
    if value.isdigit():
        index = int(value)
        return node[index] if index < len(node) else _ABSENT
    wanted = dict(part.split("=", 1) for part in value.split(",") if "=" in part)
    for item in node:
        if isinstance(item, Mapping) and all(str(item.get(k)) == v for k, v in wanted.items()):
            return item
    return _ABSENT


def keep_live(body: Mapping[str, Any], live: Mapping[str, Any] | None) -> dict[str, Any]:
    """``body`` with each ignored field set to its live value (removed where the live object has none).

    Only for an object that exists: on creation gitward writes the field as
    git says; afterwards it is the live value that is kept.
    """
    result = copy.deepcopy(dict(body))
    if live is None:
        return result
    for path in ignored_fields(body, live):
        segments = _segments(path)
        if not segments:
            continue
        parent_new: Any = result
        parent_live: Any = live
        for segment in segments[:-1]:
            parent_new, parent_live = _step(parent_new, segment), _step(parent_live, segment)
        last = segments[-1]
        if last[0] != "key" or not isinstance(parent_new, dict):
            continue
        value = _step(parent_live, last)
        if value is _ABSENT:
            parent_new.pop(last[1], None)
        else:
            parent_new[last[1]] = copy.deepcopy(value)
    return result
