"""``ObjectRef``: one Kubernetes object by kind and name, as plain data.

Inventories, records, prune plans and policy all speak of objects by
reference; keeping the value here (not in the client module) lets the pure
layers use it without importing the Kubernetes client.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """One object by kind and name, as kept in an app's inventory."""

    group: str
    version: str
    kind: str
    namespace: str
    name: str

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> ObjectRef:
        """The reference of an object body."""
        group, _, version = str(obj.get("apiVersion", "")).rpartition("/")
        metadata = obj.get("metadata") or {}
        return cls(
            group,
            version,
            str(obj.get("kind", "")),
            str(metadata.get("namespace", "")),
            str(metadata.get("name") or metadata.get("generateName") or ""),
        )

    @classmethod
    def from_inventory(cls, item: Mapping[str, Any]) -> ObjectRef:
        """Parse an entry of ``status.inventory``."""
        return cls(
            str(item.get("group", "")),
            str(item.get("version", "")),
            str(item["kind"]),
            str(item.get("namespace", "")),
            str(item["name"]),
        )

    def to_inventory(self) -> dict[str, str]:
        """The ``status.inventory`` entry."""
        return {
            "group": self.group,
            "version": self.version,
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
        }

    @property
    def api_version(self) -> str:
        """``group/version`` or ``version``."""
        return f"{self.group}/{self.version}" if self.group else self.version

    def __str__(self) -> str:
        kind = f"{self.kind}.{self.group}" if self.group else self.kind
        return f"{kind} {self.namespace}/{self.name}" if self.namespace else f"{kind} {self.name}"
