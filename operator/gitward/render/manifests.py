"""A rendered object and where it came from, so every error can name the file and document."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Manifest:
    """One Kubernetes object from the repository."""

    obj: Mapping[str, Any]
    file: str
    document: int
    decrypted: bool = False  # SOPS-decrypted by render.decrypt; its data/stringData were ciphertext in Git

    @property
    def origin(self) -> str:
        """``file#document`` (documents are counted from 0)."""
        return f"{self.file}#{self.document}"

    @property
    def api_version(self) -> str:
        """``apiVersion`` as written."""
        return str(self.obj.get("apiVersion", ""))

    @property
    def group(self) -> str:
        """The API group ("" for the core group)."""
        return self.api_version.rpartition("/")[0]

    @property
    def kind(self) -> str:
        """``kind`` as written."""
        return str(self.obj.get("kind", ""))

    @property
    def name(self) -> str:
        """``metadata.name``."""
        return str((self.obj.get("metadata") or {}).get("name", ""))

    @property
    def namespace(self) -> str | None:
        """``metadata.namespace`` if set."""
        value = (self.obj.get("metadata") or {}).get("namespace")
        return str(value) if value else None

    @property
    def describe(self) -> str:
        """``Kind/name`` with its origin, for messages."""
        return f"{self.kind}/{self.name} ({self.origin})"


def generate_name_message(origin: str) -> str:
    """What to tell a user whose object has only ``metadata.generateName`` (written for another tool)."""
    return (
        f"{origin}: metadata.generateName is not supported: gitward applies every object by name "
        "(server-side apply, pruning and the history need one); give it a metadata.name instead"
    )


def digest(manifests: Iterable[Manifest]) -> str:
    """A stable ``sha256:`` digest of the rendered objects, independent of file order."""
    canonical = sorted(json.dumps(m.obj, sort_keys=True, separators=(",", ":")) for m in manifests)
    return "sha256:" + hashlib.sha256("\n".join(canonical).encode()).hexdigest()
