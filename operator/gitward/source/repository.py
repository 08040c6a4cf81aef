"""Read-only questions about a fetched cache repository: ancestry, commit ranges, trees, objects.

Sizes come from git's own metadata (``cat-file --batch-check``, ``ls-tree
-l``) and are checked against the tenant's budget before any content is
read; git's answers are capped while they are read.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

from gitward import processes
from gitward.api.budgets import Budgets, describe
from gitward.api.conditions import Reason
from gitward.errors import Stalled, Waiting
from gitward.sharing import SharedResults
from gitward.source.commits import CommitObject, parse_commit
from gitward.source.entries import TreeEntry
from gitward.source.fetch import SHA_RE
from gitward.source.runner import INTEGRITY_PROBLEMS, OUTPUT_CAP, FetchOptions, GitRunner, throwaway_home

T = TypeVar("T")
_ENTRY_OVERHEAD: Final = 128  # mode, type, id and size of one ls-tree line, besides the path


class Repository:
    """Read-only questions about a fetched cache repository (ancestry, commit ranges, objects)."""

    def __init__(
        self,
        path: Path,
        *,
        options: FetchOptions,
        budgets: Budgets | None = None,
        trees: SharedResults[Any] | None = None,
    ) -> None:
        self.path = path
        self.options = options
        self.budgets = budgets or Budgets()
        self._cache: dict[str, CommitObject] = {}
        # A commit's tree is the same for every app that reads the repository (and the budget it is
        # read under is the tenant's, whose cache this is): listed once, shared.
        self._trees = trees

    def _run(
        self, args: Sequence[str], *, stdin: bytes | None = None, max_output: int = OUTPUT_CAP
    ) -> processes.Finished:
        with throwaway_home() as home:
            runner = GitRunner(self.options, None, home, budgets=self.budgets)
            return runner.run_raw(args, cwd=self.path, stdin=stdin, max_output=max_output)

    def _git(self, args: Sequence[str], *, stdin: bytes | None = None) -> tuple[int | None, bytes, str]:
        done = self._run(args, stdin=stdin)
        if done.ended is not processes.Ended.EXITED:
            with throwaway_home() as home:
                GitRunner(self.options, None, home, budgets=self.budgets).check(done, what=f"git {args[0]}")
        return done.code, done.stdout, done.stderr.decode(errors="replace")

    def has_commit(self, sha: str) -> bool:
        """Whether ``sha`` names a commit present in this repository."""
        if not SHA_RE.match(sha):
            return False
        code, _, _ = self._git(["cat-file", "-e", f"{sha}^{{commit}}"])
        return code == 0

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        """Whether ``descendant`` descends from ``ancestor`` (a commit is its own ancestor)."""
        if not (self.has_commit(ancestor) and self.has_commit(descendant)):
            return False
        code, _, err = self._git(["merge-base", "--is-ancestor", ancestor, descendant])
        if code in (0, 1):
            return code == 0
        raise Waiting(Reason.FETCH_FAILED, f"git merge-base failed: {err.strip()[:300]}")

    def commits_between(self, since: str | None, head: str, *, limit: int) -> list[str]:
        """Commits reachable from ``head`` but not from ``since``, merges and second parents included."""
        spec = [head] if since is None else [head, f"^{since}"]
        code, out, err = self._git(["rev-list", f"--max-count={limit + 1}", *spec, "--"])
        if code is not None and code != 0 and "bad object" in err.lower():
            raise Stalled(Reason.SOURCE_REJECTED, f"git rev-list: the history is broken: {err.strip()[:300]}")
        if code != 0:
            raise Waiting(Reason.FETCH_FAILED, f"git rev-list failed: {err.strip()[:300]}")
        return [line for line in out.decode().split() if SHA_RE.match(line)]

    def load(self, shas: Sequence[str]) -> None:
        """Read many commit objects in one ``git cat-file --batch``, after checking their sizes."""
        wanted = [sha for sha in dict.fromkeys(shas) if sha not in self._cache]
        if not wanted:
            return
        sizes = self.sizes(wanted)
        for sha, (kind, size) in sizes.items():
            if kind != "commit":
                raise Stalled(Reason.SOURCE_REJECTED, f"{sha} is a {kind}, not a commit")
            self._check_object_size(f"commit {sha[:12]}", size)
        for sha, (kind, body) in self._batch(wanted, expected=sum(s for _, s in sizes.values())).items():
            if kind != "commit":
                raise Stalled(Reason.SOURCE_REJECTED, f"{sha} is not a commit in the fetched repository")
            self._cache[sha] = parse_commit(sha, body)

    def _check_object_size(self, what: str, size: int) -> None:
        if size > self.budgets.object_bytes:
            limit = describe("object_bytes", self.budgets.object_bytes)
            raise Stalled(
                Reason.SOURCE_TOO_LARGE, f"{what} is {size} bytes; the budget for one object is {limit}"
            )

    def sizes(self, oids: Sequence[str]) -> dict[str, tuple[str, int]]:
        """Type and size of each object, from git's metadata alone (``cat-file --batch-check``)."""
        if not oids:
            return {}
        done = self._run(
            ["cat-file", "--batch-check"],
            stdin="".join(f"{oid}\n" for oid in oids).encode(),
            max_output=len(oids) * _ENTRY_OVERHEAD,
        )
        if done.code != 0:
            raise Waiting(Reason.FETCH_FAILED, f"git cat-file --batch-check failed: {done.stderr[:300]!r}")
        found: dict[str, tuple[str, int]] = {}
        for oid, line in zip(oids, done.stdout.decode(errors="replace").splitlines(), strict=False):
            fields = line.split()
            if len(fields) != 3 or not fields[2].isdigit():  # noqa: PLR2004 - "<oid> <type> <size>"
                raise Stalled(Reason.SOURCE_REJECTED, f"object {oid} is missing from the fetched repository")
            found[oid] = (fields[1], int(fields[2]))
        if len(found) != len(oids):
            raise Stalled(Reason.SOURCE_REJECTED, "objects are missing from the fetched repository")
        return found

    def commit(self, sha: str) -> CommitObject:
        """The parsed commit object."""
        self.load([sha])
        return self._cache[sha]

    def tree(self, commit: str) -> list[TreeEntry]:
        """Every entry of the commit's tree (see :meth:`list_tree`), shared between readers when possible."""
        key = ("entries", commit, self.budgets.tree_entries, self.budgets.tree_bytes)
        return self.shared(key, lambda: self.list_tree(commit))

    def shared(self, key: Hashable, compute: Callable[[], T]) -> T:
        """``compute()``, shared with every reader of this repository that asks for the same ``key``.

        For what is a pure function of the repository's immutable objects (a commit's tree, an index
        built on it): the readers of one repository are one tenant's apps.
        """
        if self._trees is None:
            return compute()
        value: T = self._trees.get((str(self.path), key), compute)
        return value

    def list_tree(self, commit: str) -> list[TreeEntry]:
        """Every entry of the commit's tree (recursively), with mode and size, without a checkout.

        A tree can name one subtree many times, so a few kilobytes of objects
        can describe billions of paths: git's answer is capped while it is
        read, and the entries and their total size are checked against the
        budget before any file is read.
        """
        budget = self.budgets
        entries_limit = describe("tree_entries", budget.tree_entries)
        done = self._run(
            ["ls-tree", "-r", "-l", "-z", "--full-tree", commit],
            max_output=budget.tree_entries * (_ENTRY_OVERHEAD + 256),
        )
        if done.over_output:
            raise Stalled(
                Reason.SOURCE_TOO_LARGE,
                f"the tree of {commit[:12]} has more entries (or longer paths) than the budget of "
                f"{entries_limit} entries allows",
            )
        if done.code != 0:
            err = done.stderr.decode(errors="replace")
            if any(problem in err.lower() for problem in INTEGRITY_PROBLEMS):
                raise Stalled(Reason.SOURCE_REJECTED, f"git ls-tree: the tree is broken: {err.strip()[:300]}")
            raise Waiting(Reason.FETCH_FAILED, f"git ls-tree failed: {err.strip()[:300]}")
        out = done.stdout
        entries = []
        total = 0
        for record in out.split(b"\0"):
            if not record:
                continue
            meta, _, path = record.partition(b"\t")
            mode, kind, oid, size = meta.split()
            entries.append(
                TreeEntry(
                    path=path.decode(errors="surrogateescape"),
                    mode=mode.decode(),
                    kind=kind.decode(),
                    oid=oid.decode(),
                    size=int(size) if size != b"-" else 0,
                )
            )
            total += entries[-1].size
        if len(entries) > budget.tree_entries:
            raise Stalled(
                Reason.SOURCE_TOO_LARGE,
                f"the tree of {commit[:12]} has {len(entries)} entries; the budget is {entries_limit}",
            )
        if total > budget.tree_bytes:
            raise Stalled(
                Reason.SOURCE_TOO_LARGE,
                f"the files of {commit[:12]} add up to {total} bytes; the budget is "
                f"{describe('tree_bytes', budget.tree_bytes)}",
            )
        return entries

    def blobs(self, oids: Sequence[str], *, known: Mapping[str, int] | None = None) -> dict[str, bytes]:
        """Read blobs in one ``git cat-file --batch``, after checking their sizes.

        ``known`` sizes (from the ``ls-tree -l`` that listed the blobs) spare a ``--batch-check``.
        """
        wanted = list(dict.fromkeys(oids))
        if known is not None and all(oid in known for oid in wanted):
            sizes = {oid: ("blob", known[oid]) for oid in wanted}
        else:
            sizes = self.sizes(wanted)
        for oid, (_, size) in sizes.items():
            self._check_object_size(f"blob {oid[:12]}", size)
        expected = sum(size for _, size in sizes.values())
        return {oid: body for oid, (_, body) in self._batch(wanted, expected=expected).items()}

    def _batch(self, oids: Sequence[str], *, expected: int) -> dict[str, tuple[str, bytes]]:
        """Objects by id, with their type, from one ``git cat-file --batch`` of ``expected`` content bytes."""
        if not oids:
            return {}
        done = self._run(
            ["cat-file", "--batch"],
            stdin="".join(f"{oid}\n" for oid in oids).encode(),
            max_output=expected + len(oids) * _ENTRY_OVERHEAD,
        )
        if done.over_output:
            raise Stalled(Reason.SOURCE_REJECTED, "git returned more bytes than the objects' sizes announced")
        code, out, err = done.code, done.stdout, done.stderr.decode(errors="replace")
        if code != 0:
            raise Waiting(Reason.FETCH_FAILED, f"git cat-file failed: {err.strip()[:300]}")
        found: dict[str, tuple[str, bytes]] = {}
        position = 0
        for oid in oids:
            header_end = out.index(b"\n", position)
            fields = out[position:header_end].split()
            if len(fields) != 3:  # noqa: PLR2004 - "<oid> <type> <size>"; "<oid> missing" otherwise
                raise Stalled(Reason.SOURCE_REJECTED, f"object {oid} is missing from the fetched repository")
            size = int(fields[2])
            found[oid] = (fields[1].decode(), out[header_end + 1 : header_end + 1 + size])
            position = header_end + 1 + size + 1
        return found
