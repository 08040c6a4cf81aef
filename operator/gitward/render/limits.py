"""Bounds on what a commit may make gitward read, parse and build.

Each limit has its own reason: the files under the source path are
``ManifestTooLarge``; what rendering produces or costs (documents, rendered
bytes, kustomize time, memory, nesting and expansion) is ``RenderTooLarge``;
the shape of one YAML document (depth, aliases, nodes) is ``YAMLRejected``.
The operator builds these from the tenant's ``spec.limits`` capped by its
own ceilings (``gitward.api.budgets``); the defaults here are the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from gitward.api.budgets import Budgets


@dataclass(frozen=True, slots=True)
class Limits:
    """The defaults fit large real apps and stop abuse well before memory or time become a problem."""

    max_total_bytes: int = 16 * 1024 * 1024  # bytes of all files read for one render
    max_file_bytes: int = 4 * 1024 * 1024  # one file (or symlink target)
    max_files: int = 2000  # files read for one render
    max_documents: int = 5000  # YAML documents (objects) in one render
    max_rendered_bytes: int = 16 * 1024 * 1024  # kustomize's output
    max_depth: int = 64  # YAML nesting
    max_aliases: int = 64
    max_nodes_per_document: int = 200_000
    max_symlink_hops: int = 8
    max_kustomizations: int = 256  # builds, counting every path to a base
    max_kustomize_depth: int = 16  # how deep kustomizations may include each other
    kustomize_timeout: float = 60.0  # CPU seconds and wall seconds of one kustomize build
    kustomize_memory_bytes: int = 2560 * 1024 * 1024  # address space: Go reserves far more than it uses

    @classmethod
    def from_budgets(cls, budgets: Budgets) -> Limits:
        """The render limits of a tenant's budgets."""
        return cls(
            max_total_bytes=budgets.source_bytes,
            max_file_bytes=budgets.file_bytes,
            max_files=budgets.files,
            max_documents=budgets.documents,
            max_rendered_bytes=budgets.rendered_bytes,
            max_depth=budgets.yaml_depth,
            max_kustomizations=budgets.kustomizations,
            max_kustomize_depth=budgets.kustomize_depth,
            kustomize_timeout=float(budgets.render_seconds),
            kustomize_memory_bytes=budgets.render_memory,
        )
