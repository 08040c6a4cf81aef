"""Kustomize, without its dangerous parts: no remote bases, no plugins, no helm, no way out of the tree.

Every kustomization reachable from the app's path is checked before
kustomize runs: a URL anywhere a path may go is ``RemoteRefForbidden``, and
so are generators, transformers, validators and helm charts (they run
plugins or fetch charts); a local path that climbs out of the repository is
``PathEscape``. Only then are the commit's files written to a private
temporary directory and built by a real kustomize (``kubectl kustomize`` by
default) with no plugin flags, a clean environment and a timeout.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from gitward import processes
from gitward.api.conditions import Reason
from gitward.errors import Stalled
from gitward.render.limits import Limits
from gitward.render.tree import Tree, normalize
from gitward.render.yamlsafe import load_documents
from gitward.source.git import TreeEntry

KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
_REMOTE = re.compile(
    r"^[a-z][a-z0-9+.-]*://|^git@|^github\.com/|^gitlab\.com/|^bitbucket\.org/|[?&]ref=|^git::|//",
    re.IGNORECASE,
)
_PATH_LISTS = ("resources", "bases", "components", "crds", "patchesStrategicMerge")
_PLUGIN_FIELDS = (
    "generators",
    "transformers",
    "validators",
    "helmCharts",
    "helmChartInflationGenerator",
    "helmGlobals",
)


def kustomization_in(tree: Tree, directory: str) -> str | None:
    """The kustomization file directly in ``directory``, if any."""
    for name in KUSTOMIZATION_NAMES:
        candidate = f"{directory}/{name}" if directory else name
        if candidate in tree.entries and tree.entries[candidate].is_file:
            return candidate
    return None


def _referenced_paths(body: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """``(field, path)`` for every place a kustomization names a file or directory."""
    for field in _PATH_LISTS:
        for item in body.get(field) or ():
            if isinstance(item, str) and "\n" not in item:  # inline patches are not paths
                yield field, item
    for field in ("patches", "patchesJson6902", "replacements"):
        for item in body.get(field) or ():
            if isinstance(item, Mapping) and isinstance(item.get("path"), str):
                yield field, item["path"]
    for field in ("configMapGenerator", "secretGenerator"):
        for generator in body.get(field) or ():
            if not isinstance(generator, Mapping):
                continue
            for entry in generator.get("files") or ():
                if isinstance(entry, str):
                    yield field, entry.split("=", 1)[-1]
            for entry in [*(generator.get("envs") or ()), generator.get("env")]:
                if isinstance(entry, str):
                    yield field, entry
    openapi = body.get("openapi")
    if isinstance(openapi, Mapping) and isinstance(openapi.get("path"), str):
        yield "openapi", openapi["path"]


def check(tree: Tree, root: str, read: Callable[[TreeEntry], bytes], *, limits: Limits) -> None:
    """Walk every kustomization reachable from ``root``; refuse remote references, plugins and escapes."""
    pending = [root]
    seen: set[str] = set()

    def read_link(entry: TreeEntry) -> str:
        return read(entry).decode(errors="replace")

    while pending:
        directory = tree.resolve(pending.pop(), read_link)
        if directory in seen:
            continue
        seen.add(directory)
        file = kustomization_in(tree, directory)
        if file is None:
            continue
        text = read(tree.entries[file]).decode(errors="replace")
        for _, body in load_documents(text, file=file, limits=limits):
            if not isinstance(body, Mapping):
                raise Stalled(Reason.YAML_REJECTED, f"{file}#0: a kustomization must be a mapping")
            for field in _PLUGIN_FIELDS:
                if body.get(field):
                    raise Stalled(
                        Reason.REMOTE_REF_FORBIDDEN,
                        f"{file}: '{field}' runs plugins or fetches charts, which gitward does not allow",
                    )
            for field, ref in _referenced_paths(body):
                if _REMOTE.search(ref):
                    raise Stalled(
                        Reason.REMOTE_REF_FORBIDDEN, f"{file}: {field} refers to the remote {ref!r}"
                    )
                target = normalize(posixpath.join(directory, ref), what=f"{file}: {field} entry")
                if field in {"resources", "bases", "components"}:
                    pending.append(target)
                real = tree.resolve(target, read_link)
                entry = tree.entries.get(real)
                if entry is not None and entry.is_file and real.endswith((".yaml", ".yml", ".json")):
                    # kustomize's own parser is not bounded the way ours is: vet every input first.
                    for _ in load_documents(read(entry).decode(errors="replace"), file=target, limits=limits):
                        pass


def build(
    tree: Tree,
    root: str,
    read: Callable[[TreeEntry], bytes],
    *,
    limits: Limits,
    command: Sequence[str],
) -> str:
    """Write the tree's files to a private directory and run kustomize on ``root``; return its YAML."""

    def read_link(entry: TreeEntry) -> str:
        return read(entry).decode(errors="replace")

    with tempfile.TemporaryDirectory(prefix="gitward-kustomize-") as workdir:
        base = Path(workdir)
        base.chmod(0o700)
        checkout = base / "repo"
        for view in tree.files_under("", read_link):
            target = checkout / view.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(read(view.entry))
        (checkout / root).mkdir(parents=True, exist_ok=True)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(base), "LANG": "C", "LC_ALL": "C"}
        if shutil.which(command[0], path=env["PATH"]) is None and not Path(command[0]).exists():
            raise Stalled(Reason.YAML_REJECTED, f"kustomize is not available ({command[0]} not found)")
        result = processes.run(
            [*command, str(checkout / root)], env=env, cwd=base, timeout=limits.kustomize_timeout
        )
        if result.timed_out:
            raise Stalled(
                Reason.YAML_REJECTED,
                f"kustomize build of {root or '.'} took longer than {limits.kustomize_timeout:g}s",
            )
        if result.code != 0:
            message = result.stderr.decode(errors="replace").replace(str(checkout) + "/", "").strip()
            raise Stalled(Reason.YAML_REJECTED, f"kustomize build of {root or '.'} failed: {message[:800]}")
        if len(result.stdout) > limits.max_total_bytes:
            raise Stalled(
                Reason.MANIFEST_TOO_LARGE,
                f"kustomize output of {root or '.'} exceeds {limits.max_total_bytes} bytes",
            )
        return result.stdout.decode(errors="replace")
