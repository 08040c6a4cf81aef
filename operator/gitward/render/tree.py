"""The files of a commit, read without a checkout, with symlinks resolved inside the tree only.

Nothing is written to disk to read plain YAML, so no path in the repository
can make gitward open a file outside it. A symlink is followed only when its
target, resolved against the link's own directory, stays inside the
repository (``SymlinkOutOfBounds`` otherwise); a requested path that climbs
out is ``PathEscape``. Pure over the entries and blobs it is given.
"""

from __future__ import annotations

import bisect
import itertools
import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from gitward.api.conditions import Reason
from gitward.errors import Stalled
from gitward.render.limits import Limits
from gitward.source.entries import TreeEntry


def normalize(path: str, *, what: str) -> str:
    """A repository-relative path without ``.``/``..``; ``PathEscape`` if it would leave the repository."""
    if path.startswith("/") or "\0" in path:
        raise Stalled(Reason.PATH_ESCAPE, f"{what} {path!r} must be a relative path inside the repository")
    parts: list[str] = []
    for part in path.split("/"):
        if part in {"", "."}:
            continue
        if part == "..":
            if not parts:
                raise Stalled(Reason.PATH_ESCAPE, f"{what} {path!r} leaves the repository")
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


@dataclass(frozen=True, slots=True)
class FileView:
    """A regular file as seen through the tree (``path`` is where it was asked for)."""

    path: str
    entry: TreeEntry


class Tree:
    """Lookup of a commit's files with in-tree symlink resolution."""

    def __init__(self, entries: Sequence[TreeEntry], *, limits: Limits) -> None:
        self.limits = limits
        self.entries: Mapping[str, TreeEntry] = {e.path: e for e in entries}
        self._ordered: list[str] | None = None
        directories = set()
        for path in self.entries:
            parent = posixpath.dirname(path)
            while parent:
                directories.add(parent)
                parent = posixpath.dirname(parent)
        self.directories = frozenset(directories)

    def _sorted_paths(self) -> list[str]:
        if self._ordered is None:
            self._ordered = sorted(self.entries)
        return self._ordered

    def resolve(self, path: str, read_link: Callable[[TreeEntry], str]) -> str:
        """Follow symlinks (in any component) until a real path; refuse anything that leaves the tree."""
        current = normalize(path, what="path")
        for _ in range(self.limits.max_symlink_hops + 1):
            parts = current.split("/") if current else []
            for depth in range(1, len(parts) + 1):
                prefix = "/".join(parts[:depth])
                entry = self.entries.get(prefix)
                if entry is not None and entry.is_symlink:
                    target = read_link(entry)
                    if target.startswith("/"):
                        raise Stalled(
                            Reason.SYMLINK_OUT_OF_BOUNDS,
                            f"{prefix} is a symlink to the absolute path {target!r}, outside the repository",
                        )
                    joined = posixpath.join(posixpath.dirname(prefix), target, *parts[depth:])
                    try:
                        current = normalize(joined, what="symlink target")
                    except Stalled:
                        raise Stalled(
                            Reason.SYMLINK_OUT_OF_BOUNDS,
                            f"{prefix} is a symlink to {target!r}, outside the repository",
                        ) from None
                    break
            else:
                return current
        raise Stalled(
            Reason.SYMLINK_OUT_OF_BOUNDS,
            f"{path} goes through more than {self.limits.max_symlink_hops} symlinks",
        )

    def exists(self, path: str) -> bool:
        """Whether ``path`` (resolved, in bounds) names the root, a directory or an entry of the tree."""
        return not path or path in self.directories or path in self.entries

    def files_under(self, directory: str, read_link: Callable[[TreeEntry], str]) -> list[FileView]:
        """Every file under ``directory`` (recursively, sorted), symlinks resolved in bounds."""
        root = self.resolve(directory, read_link)
        if root and root not in self.directories and root in self.entries:
            entry = self.entries[root]
            return [FileView(root, entry)] if entry.is_file else []
        if root and root not in self.directories:
            raise Stalled(Reason.PATH_ESCAPE, f"source.path {directory!r} does not exist in the commit")
        prefix = f"{root}/" if root else ""
        views = []
        # The paths under a directory are one contiguous run of the sorted paths: found by bisection,
        # so a thousand apps rendering their own directories of one tree do not each scan all of it.
        ordered = self._sorted_paths()
        start = bisect.bisect_left(ordered, prefix)
        for path in itertools.takewhile(lambda p: p.startswith(prefix), ordered[start:]):
            entry = self.entries[path]
            if entry.is_symlink:
                real = self.resolve(path, read_link)
                target = self.entries.get(real)
                if target is not None and target.is_file:
                    views.append(FileView(path, target))
            elif entry.is_file:
                views.append(FileView(path, entry))
        return views
