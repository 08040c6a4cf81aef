"""``render.load``: a verified commit's ``source.path`` as a list of Kubernetes objects.

Plain YAML (every ``.yaml``, ``.yml`` and ``.json`` file under the path,
recursively, dotfiles skipped, multi-document, ``List`` kinds expanded) or,
when the path holds a kustomization, a kustomize build. Every limit is
checked before the bytes are read; every refusal names the file and the
document index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gitward.api.conditions import Reason
from gitward.errors import Stalled
from gitward.render import kustomize
from gitward.render.limits import Limits
from gitward.render.manifests import Manifest, digest, generate_name_message
from gitward.render.tree import Tree, normalize
from gitward.render.yamlsafe import load_documents
from gitward.source.entries import TreeEntry
from gitward.source.repository import Repository

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
DEFAULT_KUSTOMIZE = ("kubectl", "kustomize")
MAX_SYMLINK_TARGET = 4096


@dataclass(frozen=True, slots=True)
class Rendered:
    """The objects of one commit, with a digest for the history record."""

    manifests: tuple[Manifest, ...]
    digest: str
    files: int
    kustomized: bool
    # source.path as asked for, when the commit has no such path: nothing to render, which is the
    # empty-source case (the prune guard decides), not an escape.
    missing: str = ""


def _objects(value: object, *, file: str, index: int) -> list[Manifest]:
    if not isinstance(value, Mapping):
        raise Stalled(
            Reason.YAML_REJECTED, f"{file}#{index}: a manifest must be a mapping, not {type(value).__name__}"
        )
    kind = value.get("kind")
    items = value.get("items")
    if isinstance(kind, str) and kind.endswith("List") and isinstance(items, list):
        expanded = []
        for item in items:
            expanded.extend(_objects(item, file=file, index=index))
        return expanded
    metadata = value.get("metadata")
    problems = []
    if not isinstance(value.get("apiVersion"), str) or not value.get("apiVersion"):
        problems.append("apiVersion")
    if not isinstance(kind, str) or not kind:
        problems.append("kind")
    if (
        not isinstance(metadata, Mapping)
        or not isinstance(metadata.get("name"), str)
        or not metadata.get("name")
    ):
        problems.append("metadata.name")
    if problems == ["metadata.name"] and isinstance(metadata, Mapping) and metadata.get("generateName"):
        raise Stalled(Reason.YAML_REJECTED, generate_name_message(f"{file}#{index}"))
    if problems:
        raise Stalled(Reason.YAML_REJECTED, f"{file}#{index}: missing or invalid {', '.join(problems)}")
    return [Manifest(obj=value, file=file, document=index)]


def parse_files(files: Sequence[tuple[str, bytes]], *, limits: Limits) -> list[Manifest]:
    """Parse already-read files into manifests, enforcing the document limit."""
    manifests: list[Manifest] = []
    documents = 0
    for name, data in files:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise Stalled(Reason.YAML_REJECTED, f"{name}#0: not UTF-8 text") from None
        for index, value in load_documents(text, file=name, limits=limits):
            documents += 1
            if documents > limits.max_documents:
                raise Stalled(
                    Reason.RENDER_TOO_LARGE, f"{name}#{index}: more than {limits.max_documents} documents"
                )
            manifests.extend(_objects(value, file=name, index=index))
    return manifests


def load(
    repo: Repository,
    commit: str,
    path: str,
    *,
    limits: Limits | None = None,
    kustomize_command: Sequence[str] = DEFAULT_KUSTOMIZE,
) -> Rendered:
    """Render ``path`` at ``commit``; raise ``Stalled`` with the reason and the file that stops it."""
    limits = limits or Limits()
    root = normalize(path, what="source.path")
    tree = repo.shared(("index", commit, limits), lambda: Tree(repo.tree(commit), limits=limits))
    links = [e for e in tree.entries.values() if e.is_symlink]
    for link in links:
        if link.size > MAX_SYMLINK_TARGET:  # a path longer than PATH_MAX cannot name anything in the tree
            raise Stalled(
                Reason.SYMLINK_OUT_OF_BOUNDS,
                f"{link.path} is a symlink to a {link.size}-byte path; at most {MAX_SYMLINK_TARGET}",
            )
    link_targets = repo.blobs([e.oid for e in links])
    blob_cache: dict[str, bytes] = dict(link_targets)

    def read_link(entry: TreeEntry) -> str:
        return blob_cache[entry.oid].decode(errors="replace")

    root = tree.resolve(root, read_link)
    if not tree.exists(root):
        return Rendered(manifests=(), digest=digest([]), files=0, kustomized=False, missing=path)
    kustomization = kustomize.kustomization_in(tree, root)
    if kustomization is not None:
        files = tree.files_under("", read_link)
    else:
        files = [
            view
            for view in tree.files_under(root, read_link)
            if view.path.endswith(MANIFEST_SUFFIXES)
            and not any(p.startswith(".") for p in view.path.split("/"))
        ]
    _check_sizes([(view.path, view.entry) for view in files], limits)
    blob_cache.update(
        repo.blobs([view.entry.oid for view in files], known={v.entry.oid: v.entry.size for v in files})
    )

    def read(entry: TreeEntry) -> bytes:
        if entry.oid not in blob_cache:
            blob_cache.update(repo.blobs([entry.oid]))
        return blob_cache[entry.oid]

    if kustomization is not None:
        kustomize.check(tree, root, read, limits=limits)
        built = kustomize.build(tree, root, read, limits=limits, command=kustomize_command)
        manifests = parse_files([(f"{kustomization} (kustomize build)", built.encode())], limits=limits)
    else:
        manifests = parse_files([(view.path, read(view.entry)) for view in files], limits=limits)
    return Rendered(
        manifests=tuple(manifests),
        digest=digest(manifests),
        files=len(files),
        kustomized=kustomization is not None,
    )


def _check_sizes(files: Sequence[tuple[str, TreeEntry]], limits: Limits) -> None:
    if len(files) > limits.max_files:
        raise Stalled(
            Reason.MANIFEST_TOO_LARGE,
            f"{len(files)} files under the source path; the limit is {limits.max_files}",
        )
    total = 0
    for name, entry in files:
        if entry.size > limits.max_file_bytes:
            raise Stalled(
                Reason.MANIFEST_TOO_LARGE,
                f"{name}#0: {entry.size} bytes; the limit per file is {limits.max_file_bytes}",
            )
        total += entry.size
        if total > limits.max_total_bytes:
            raise Stalled(
                Reason.MANIFEST_TOO_LARGE,
                f"{name}#0: the files exceed {limits.max_total_bytes} bytes in total",
            )
