"""Bounds on what a commit may make gitward read and parse.

Each limit has its own reason: size-like limits are ``ManifestTooLarge``,
shape-like limits (depth, aliases, nodes) are ``YAMLRejected``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    """The defaults fit large real apps and stop abuse well before memory or time become a problem."""

    max_total_bytes: int = 16 * 1024 * 1024
    max_file_bytes: int = 4 * 1024 * 1024
    max_files: int = 2000
    max_documents: int = 5000
    max_depth: int = 64
    max_aliases: int = 64
    max_nodes_per_document: int = 200_000
    max_symlink_hops: int = 8
    kustomize_timeout: float = 60.0
