"""Plain values the git layer hands to the rest of gitward: a tree entry, with its size from git's metadata.

Pure data, so the render layer can read trees without importing anything
that starts a process.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TreeEntry:
    """One entry of a commit's tree: a file (100644/100755), a symlink (120000) or a submodule (160000)."""

    path: str
    mode: str
    kind: str
    oid: str
    size: int

    @property
    def is_symlink(self) -> bool:
        """A symbolic link: its blob is the target path."""
        return self.mode == "120000"

    @property
    def is_file(self) -> bool:
        """A regular file."""
        return self.kind == "blob" and not self.is_symlink
