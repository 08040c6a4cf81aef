"""Kustomize, without its dangerous parts: nothing remote, no plugins, no helm, nothing outside the commit.

:func:`check` runs first and vets exactly what kustomize (v5) would read,
as an allow-list, for every kustomization reachable from the app's path:

- Each directory kustomize builds holds exactly one kustomization file
  (``kustomization.yaml``, ``kustomization.yml`` or ``Kustomization``), read
  by the bounded YAML loader. A top-level field that kustomize's
  ``Kustomization``/``Component`` does not define, or an unknown key in an
  entry that can name files, is ``YAMLRejected``: Go's JSON decoding matches
  field names case-insensitively, so only the exact spellings are walked
  and anything else is refused rather than left unvetted.
- Every field that names a file or a directory (resources, bases,
  components, crds, configurations, generators, transformers, validators,
  patchesStrategicMerge, patches and patchesJson6902 paths, replacements
  paths, generator files and env files, openapi.path, helm paths) must be a
  relative path that kustomize cannot take for a remote reference (its
  loader tries a git URL before a local directory, and fetches ``http(s)``
  files directly): no URL scheme, ``::``, ``@``, ``:``, ``?``, ``#``, ``//``,
  leading ``~``, ``_git`` segment, or host name as the first component -
  ``RemoteRefForbidden``. It must stay inside the repository (``PathEscape``)
  and exist in the commit after in-tree symlink resolution
  (``RemoteRefForbidden`` otherwise: kustomize would look for it elsewhere).
  Every YAML file and inline patch kustomize parses goes through the bounded
  loader first.
- Directories named by resources, bases, components, generators,
  transformers and validators are kustomizations and are vetted in turn.
  Generators, transformers and validators are allowed only as local files
  (or inline text) of kustomize's builtin kinds (``LabelTransformer``,
  ``ConfigMapGenerator``, ...), whose own file references are vetted too:
  that is kustomize's code on the commit's files. Exec, container,
  starlark and KRM-function plugins, directories of plugin configurations,
  and Helm chart inflation are ``PluginForbidden``.
- Kustomize builds a base once per path that reaches it, so builds are
  counted along every path: more than ``max_kustomizations`` builds, or
  nesting deeper than ``max_kustomize_depth``, is ``RenderTooLarge``; a
  cycle is ``YAMLRejected``. Each distinct kustomization is read once, so the
  check stays linear when the expansion is exponential.

:func:`build` then writes the commit's files (in-tree symlinks to
directories kept as symlinks) to a private temporary directory and runs a
real kustomize (``kubectl kustomize`` by default) on it, with no plugin
flags, a timeout, and an environment that can neither run git (``PATH`` is an
empty directory) nor reach the network through a proxy-aware client (every
proxy is a closed port). Output over ``max_rendered_bytes`` or a timeout is
``RenderTooLarge``; a missing kustomize is the operator's problem
(``Waiting``/``ReconcileError``), not the commit's.
"""

from __future__ import annotations

import enum
import os
import posixpath
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gitward import processes
from gitward.api.conditions import Reason
from gitward.errors import Stalled
from gitward.render import programs
from gitward.render.limits import Limits
from gitward.render.manifests import generate_name_message
from gitward.render.tree import Tree, normalize
from gitward.render.yamlsafe import load_documents
from gitward.source.entries import TreeEntry

KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
_PLUGIN_FIELDS = ("generators", "transformers", "validators")
_HELM_FIELDS = ("helmCharts", "helmChartInflationGenerator", "helmGlobals")
# kustomize's own code, configured from a file: safe. Helm inflation and IAM policies reach outside.
BUILTIN_KINDS = frozenset(
    {
        "AnnotationsTransformer",
        "ConfigMapGenerator",
        "HashTransformer",
        "ImageTagTransformer",
        "LabelTransformer",
        "NamespaceTransformer",
        "PatchJson6902Transformer",
        "PatchStrategicMergeTransformer",
        "PatchTransformer",
        "PrefixSuffixTransformer",
        "PrefixTransformer",
        "ReplacementTransformer",
        "ReplicaCountTransformer",
        "SecretGenerator",
        "SortOrderTransformer",
        "SuffixTransformer",
        "ValueAddTransformer",
    }
)
_FUNCTION_ANNOTATIONS = ("config.kubernetes.io/function", "config.k8s.io/function")
_BUILTIN_PATH_FIELDS = ("path", "paths", "files", "envs", "env")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_NOT_REMOTE = "; gitward builds only from the commit's own files"


class _Expect(enum.Enum):
    """What kustomize does with the path in a field."""

    KUSTOMIZATION = "a directory with a kustomization"  # components
    RESOURCE = "a YAML file or a directory with a kustomization"  # resources, bases, plugins
    YAML = "a YAML or JSON file"  # parsed by kustomize
    DATA = "a file"  # read as bytes (generator files)
    ANY = "a file or a directory"  # helm's homes and repositories


@dataclass(frozen=True, slots=True)
class _Slot:
    """A value that names a path (``expect``) or holds inline YAML (``expect`` None)."""

    expect: _Expect | None
    many: bool = False  # a list of them
    inline: bool = False  # an entry with a newline is inline YAML, not a path
    keyed: bool = False  # ``key=path`` (generator files)


@dataclass(frozen=True, slots=True)
class _Shape:
    """A mapping (or a list of them) with the keys kustomize defines; ``slots`` are the path-carrying ones."""

    keys: frozenset[str]
    slots: Mapping[str, _Slot]
    many: bool = True


_GENERATOR_KEYS = frozenset({"namespace", "name", "behavior", "literals", "files", "envs", "env", "options"})
_GENERATOR_SLOTS = {
    "files": _Slot(_Expect.DATA, many=True, keyed=True),
    "envs": _Slot(_Expect.DATA, many=True),
    "env": _Slot(_Expect.DATA),
}
_PATCHES = _Shape(
    frozenset({"path", "patch", "target", "options"}),
    {"path": _Slot(_Expect.YAML), "patch": _Slot(None)},
)
_HELM_CHART_KEYS = frozenset(
    {
        "name", "version", "repo", "releaseName", "namespace", "additionalValuesFiles", "valuesFile",
        "valuesInline", "valuesMerge", "includeCRDs", "skipHooks", "apiVersions", "kubeVersion",
        "nameTemplate", "skipTests", "debug", "devel",
    }
)  # fmt: skip
_HELM_ARGS_KEYS = frozenset(
    {
        "chartName", "chartVersion", "chartRepoUrl", "chartHome", "chartRepoName", "helmBin", "helmHome",
        "values", "valuesLocal", "valuesMerge", "releaseName", "releaseNamespace", "extraArgs",
    }
)  # fmt: skip

# Every top-level field of kustomize v5's types.Kustomization (Kustomization v1beta1 and Component
# v1alpha1): None for fields that hold only values, else how its paths are found.
_FIELDS: Mapping[str, _Slot | _Shape | None] = {
    "apiVersion": None,
    "kind": None,
    "metadata": None,
    "namePrefix": None,
    "nameSuffix": None,
    "namespace": None,
    "commonLabels": None,
    "labels": None,
    "commonAnnotations": None,
    "images": None,
    "imageTags": None,
    "replicas": None,
    "vars": None,
    "sortOptions": None,
    "generatorOptions": None,
    "buildMetadata": None,
    "resources": _Slot(_Expect.RESOURCE, many=True),
    "bases": _Slot(_Expect.RESOURCE, many=True),
    "components": _Slot(_Expect.KUSTOMIZATION, many=True),
    "crds": _Slot(_Expect.YAML, many=True),
    "configurations": _Slot(_Expect.YAML, many=True),
    "patchesStrategicMerge": _Slot(_Expect.YAML, many=True, inline=True),
    "generators": _Slot(_Expect.RESOURCE, many=True, inline=True),
    "transformers": _Slot(_Expect.RESOURCE, many=True, inline=True),
    "validators": _Slot(_Expect.RESOURCE, many=True, inline=True),
    "patches": _PATCHES,
    "patchesJson6902": _PATCHES,
    "replacements": _Shape(
        frozenset({"path", "source", "targets", "sourceValue"}), {"path": _Slot(_Expect.YAML)}
    ),
    "configMapGenerator": _Shape(_GENERATOR_KEYS, _GENERATOR_SLOTS),
    "secretGenerator": _Shape(_GENERATOR_KEYS | {"type"}, _GENERATOR_SLOTS),
    "openapi": _Shape(frozenset({"path", "version"}), {"path": _Slot(_Expect.YAML)}, many=False),
    "helmGlobals": _Shape(
        frozenset({"chartHome", "configHome"}),
        {"chartHome": _Slot(_Expect.ANY), "configHome": _Slot(_Expect.ANY)},
        many=False,
    ),
    "helmCharts": _Shape(
        _HELM_CHART_KEYS,
        {
            "repo": _Slot(_Expect.ANY),
            "valuesFile": _Slot(_Expect.YAML),
            "additionalValuesFiles": _Slot(_Expect.YAML, many=True),
        },
    ),
    "helmChartInflationGenerator": _Shape(
        _HELM_ARGS_KEYS,
        {
            "chartHome": _Slot(_Expect.ANY),
            "chartRepoUrl": _Slot(_Expect.ANY),
            "helmBin": _Slot(_Expect.ANY),
            "helmHome": _Slot(_Expect.ANY),
            "values": _Slot(_Expect.YAML),
        },
    ),
}


def kustomization_in(tree: Tree, directory: str) -> str | None:
    """The kustomization file directly in ``directory``, if any."""
    for name in KUSTOMIZATION_NAMES:
        candidate = f"{directory}/{name}" if directory else name
        if candidate in tree.entries and tree.entries[candidate].is_file:
            return candidate
    return None


def remote_form(ref: str) -> str | None:
    """Why kustomize (or git, or go-getter before it) could take ``ref`` for a remote; None if it cannot.

    A superset of kustomize's ``git.NewRepoSpecFromURL`` (schemes, ``user@host:``,
    ``github.com/``, ``_git/``, ``//`` and ``?ref=``) and ``loader.IsRemoteFile``
    (``http(s)://``), and of the older parsers (``gh:``, ``git::``, go-getter's
    ``host.tld/`` detectors).
    """
    problem = None
    parts = ref.split("/")
    if _SCHEME.match(ref):
        problem = "has a URL scheme"
    elif "::" in ref:
        problem = "forces a fetch protocol ('::')"
    elif "@" in ref:
        problem = "names a user at a host ('@')"
    elif ":" in ref:
        problem = "has the form host:path (':')"
    elif "?" in ref:
        problem = "has a query such as ?ref= or ?version= ('?')"
    elif "#" in ref:
        problem = "has a fragment ('#')"
    elif "//" in ref:
        problem = "separates a repository from a subdirectory ('//')"
    elif ref.startswith("~"):
        problem = "starts at a home directory ('~')"
    elif len(parts) > 1 and "." in parts[0] and parts[0] not in {".", ".."}:
        problem = f"starts with the host name {parts[0]!r}"
    elif "_git" in parts:
        problem = "has an Azure-style '_git' segment"
    return None if problem is None else f"{problem}, so kustomize would fetch it"


def _reference(
    tree: Tree, directory: str, ref: object, read_link: Callable[[TreeEntry], str], *, what: str
) -> tuple[str, str]:
    """``(path as written, normalized; path after symlinks)`` of a vetted reference."""
    if not isinstance(ref, str):
        raise Stalled(Reason.YAML_REJECTED, f"{what} must be a string, not {type(ref).__name__}")
    if not ref:
        raise Stalled(Reason.YAML_REJECTED, f"{what} is an empty path")
    problem = remote_form(ref)
    if problem is not None:
        raise Stalled(Reason.REMOTE_REF_FORBIDDEN, f"{what} {ref!r} {problem}{_NOT_REMOTE}")
    target = normalize(posixpath.join(directory, ref), what=what)
    real = tree.resolve(target, read_link)
    entry = tree.entries.get(real)
    if not (real == "" or real in tree.directories or (entry is not None and entry.is_file)):
        raise Stalled(
            Reason.REMOTE_REF_FORBIDDEN,
            f"{what} {ref!r} does not exist in the commit, so kustomize would look for it outside the "
            f"commit{_NOT_REMOTE}",
        )
    return target, real


def vet_reference(
    tree: Tree, directory: str, ref: object, read_link: Callable[[TreeEntry], str], *, what: str
) -> str:
    """The in-tree path ``ref`` (relative to ``directory``) names, after symlinks; ``Stalled`` otherwise.

    ``RemoteRefForbidden`` if kustomize could take it for a remote reference or
    would not find it in the commit, ``PathEscape`` or ``SymlinkOutOfBounds`` if
    it leaves the repository, ``YAMLRejected`` if it is not a non-empty string.
    """
    return _reference(tree, directory, ref, read_link, what=what)[1]


@dataclass(slots=True)
class _Node:
    """A vetted kustomization: its file and the kustomization directories it builds, in order."""

    file: str
    children: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Frame:
    """A kustomization on the walk's path, with the builds and height of its children so far."""

    directory: str
    children: list[str]
    next_child: int = 0
    builds: int = 1
    height: int = 0


class _Vetting:
    """One check: vetted kustomizations and files, each read once."""

    def __init__(self, tree: Tree, read: Callable[[TreeEntry], bytes], limits: Limits) -> None:
        self.tree = tree
        self.read = read
        self.limits = limits
        self.nodes: dict[str, _Node] = {}
        self.vetted: set[str] = set()

    def read_link(self, entry: TreeEntry) -> str:
        return self.read(entry).decode(errors="replace")

    def _is_file(self, path: str) -> bool:
        entry = self.tree.entries.get(path)
        if entry is not None and entry.is_symlink:
            entry = self.tree.entries.get(self.tree.resolve(path, self.read_link))
        return entry is not None and entry.is_file

    def kustomization_file(self, directory: str, *, what: str) -> str:
        """The one kustomization file kustomize would read in ``directory`` (symlinks followed)."""
        found = [
            candidate
            for name in KUSTOMIZATION_NAMES
            if self._is_file(candidate := f"{directory}/{name}" if directory else name)
        ]
        shown = directory or "."
        if not found:
            raise Stalled(
                Reason.YAML_REJECTED,
                f"{what}: no kustomization in {shown!r} "
                f"(kustomize needs one of {', '.join(KUSTOMIZATION_NAMES)})",
            )
        if len(found) > 1:
            raise Stalled(
                Reason.YAML_REJECTED,
                f"{what}: {shown!r} holds more than one kustomization file ({', '.join(found)}); "
                "kustomize refuses that",
            )
        return found[0]

    def vet_yaml(self, shown: str, real: str) -> None:
        """Run a file kustomize parses through the bounded loader (once per file)."""
        if real in self.vetted:
            return
        self.vetted.add(real)
        text = self.read(self.tree.entries[real]).decode(errors="replace")
        for index, value in load_documents(text, file=shown, limits=self.limits):
            metadata = value.get("metadata") if isinstance(value, Mapping) else None
            if isinstance(metadata, Mapping) and metadata.get("generateName") and not metadata.get("name"):
                # kustomize would only say "missing metadata.name"; say what to do instead.
                raise Stalled(Reason.YAML_REJECTED, generate_name_message(f"{shown}#{index}"))

    def vet_inline(self, directory: str, text: str, *, what: str, maybe_path: bool) -> None:
        """Inline YAML goes through the bounded loader, and so does a same-named file kustomize may read."""
        for _ in load_documents(text, file=f"{what} (inline)", limits=self.limits):
            pass
        if not maybe_path:
            return
        try:  # kustomize reads the text as a path when it does not parse as resources
            target = normalize(posixpath.join(directory, text), what=what)
            real = self.tree.resolve(target, self.read_link)
        except Stalled:
            return
        if self._is_file(real):
            self.vet_yaml(target, real)

    def load(self, directory: str, *, what: str) -> _Node:
        """Vet the kustomization in ``directory`` and every reference in it (memoized)."""
        node = self.nodes.get(directory)
        if node is not None:
            return node
        file = self.kustomization_file(directory, what=what)
        body = self._parse(file)
        node = _Node(file)
        for name, value in body.items():
            if not isinstance(name, str) or name not in _FIELDS:
                raise Stalled(
                    Reason.YAML_REJECTED,
                    f"{file}: unknown field {name!r}; gitward accepts only the fields of kustomize v5's "
                    "Kustomization and Component, spelled exactly",
                )
            spec = _FIELDS[name]
            if value is None or spec is None:
                continue
            if isinstance(spec, _Slot):
                self._slot(directory, value, spec, node, what=f"{file}: {name}")
            else:
                self._shape(directory, value, spec, node, what=f"{file}: {name}")
        for name in _HELM_FIELDS:
            if body.get(name):
                raise Stalled(
                    Reason.PLUGIN_FORBIDDEN,
                    f"{file}: '{name}' inflates Helm charts, which gitward does not; commit what they render",
                )
        for name in _PLUGIN_FIELDS:
            for index, entry in enumerate(body.get(name) or ()):
                self._builtin_only(directory, entry, what=f"{file}: {name}[{index}]")
        self.nodes[directory] = node
        return node

    def _parse(self, file: str) -> Mapping[Any, Any]:
        entry = self.tree.entries[self.tree.resolve(file, self.read_link)]
        text = self.read(entry).decode(errors="replace")
        documents = list(load_documents(text, file=file, limits=self.limits))
        if not documents:
            return {}
        if len(documents) > 1:
            raise Stalled(
                Reason.YAML_REJECTED,
                f"{file}#{documents[1][0]}: a kustomization file holds one document "
                "(kustomize reads only the first)",
            )
        index, body = documents[0]
        if not isinstance(body, Mapping):
            raise Stalled(Reason.YAML_REJECTED, f"{file}#{index}: a kustomization must be a mapping")
        return body

    def _shape(self, directory: str, value: object, shape: _Shape, node: _Node, *, what: str) -> None:
        if shape.many and not isinstance(value, list):
            raise Stalled(Reason.YAML_REJECTED, f"{what} must be a list")
        items = value if isinstance(value, list) else [value]
        for index, item in enumerate(items):
            where = f"{what}[{index}]" if shape.many else what
            if not isinstance(item, Mapping):
                raise Stalled(Reason.YAML_REJECTED, f"{where} must be a mapping")
            for key, inner in item.items():
                if key not in shape.keys:
                    raise Stalled(Reason.YAML_REJECTED, f"{where}: unknown field {key!r}")
                slot = shape.slots.get(key)
                if slot is not None and inner is not None and inner != "":
                    self._slot(directory, inner, slot, node, what=f"{where}.{key}")

    def _slot(self, directory: str, value: object, slot: _Slot, node: _Node, *, what: str) -> None:
        if not slot.many:
            self._one(directory, value, slot, node, what=what)
            return
        if not isinstance(value, list):
            raise Stalled(Reason.YAML_REJECTED, f"{what} must be a list")
        for index, item in enumerate(value):
            self._one(directory, item, slot, node, what=f"{what}[{index}]")

    def _one(self, directory: str, value: object, slot: _Slot, node: _Node, *, what: str) -> None:
        if not isinstance(value, str):
            raise Stalled(Reason.YAML_REJECTED, f"{what} must be a string, not {type(value).__name__}")
        if slot.expect is None or (slot.inline and "\n" in value):
            # kustomize only Loads such text as a path, and Go's url.Parse refuses control characters, so
            # it cannot be fetched (inline plugin configurations are refused below anyway).
            self.vet_inline(directory, value, what=what, maybe_path=slot.expect is not None)
            return
        ref = value.split("=", 1)[-1] if slot.keyed else value
        target, real = _reference(self.tree, directory, ref, self.read_link, what=what)
        is_directory = real == "" or real in self.tree.directories
        if slot.expect in {_Expect.KUSTOMIZATION, _Expect.RESOURCE} and is_directory:
            self.kustomization_file(real, what=f"{what} {ref!r}")
            node.children.append(real)
        elif slot.expect in {_Expect.KUSTOMIZATION, _Expect.YAML, _Expect.DATA} and is_directory:
            raise Stalled(Reason.YAML_REJECTED, f"{what} {ref!r} is a directory; kustomize expects a file")
        elif slot.expect is _Expect.KUSTOMIZATION:
            raise Stalled(
                Reason.YAML_REJECTED, f"{what} {ref!r} is a file; kustomize expects {slot.expect.value}"
            )
        elif slot.expect in {_Expect.RESOURCE, _Expect.YAML}:
            self.vet_yaml(target, real)

    def _builtin_only(self, directory: str, entry: object, *, what: str) -> None:
        """A generator, transformer or validator entry: a local file or inline text, builtin plugins only."""
        if not isinstance(entry, str):
            raise Stalled(Reason.YAML_REJECTED, f"{what} must be a string, not {type(entry).__name__}")
        if "\n" in entry:
            documents = list(load_documents(entry, file=f"{what} (inline)", limits=self.limits))
            shown = f"{what} (inline)"
        else:
            target, real = _reference(self.tree, directory, entry, self.read_link, what=what)
            if real == "" or real in self.tree.directories:
                raise Stalled(
                    Reason.PLUGIN_FORBIDDEN,
                    f"{what} {entry!r} is a directory: a kustomization that produces plugin configurations; "
                    "gitward allows only files of builtin transformers and generators",
                )
            text = self.read(self.tree.entries[real]).decode(errors="replace")
            documents = list(load_documents(text, file=target, limits=self.limits))
            shown = target
        for index, config in documents:
            self._builtin_config(directory, config, where=f"{shown}#{index}")

    def _builtin_config(self, directory: str, config: object, *, where: str) -> None:
        if not isinstance(config, Mapping):
            raise Stalled(Reason.YAML_REJECTED, f"{where}: a plugin configuration must be a mapping")
        api_version, kind = config.get("apiVersion"), config.get("kind")
        annotations = (config.get("metadata") or {}).get("annotations") or {}
        if any(key in annotations for key in _FUNCTION_ANNOTATIONS):
            raise Stalled(
                Reason.PLUGIN_FORBIDDEN,
                f"{where}: {kind} is a KRM function (container, exec or starlark); gitward runs no plugins",
            )
        if api_version != "builtin" or kind not in BUILTIN_KINDS:
            raise Stalled(
                Reason.PLUGIN_FORBIDDEN,
                f"{where}: {api_version}/{kind} is not one of kustomize's builtin transformers or generators "
                f"({', '.join(sorted(BUILTIN_KINDS))}); gitward runs no other plugins",
            )
        for key in _BUILTIN_PATH_FIELDS:
            value = config.get(key)
            refs = value if isinstance(value, list) else [value] if isinstance(value, str) else []
            for ref in refs:
                if isinstance(ref, str):
                    target, real = _reference(
                        self.tree, directory, ref.split("=", 1)[-1], self.read_link, what=f"{where}: {key}"
                    )
                    if key == "path" and self._is_file(real):
                        self.vet_yaml(target, real)

    def walk(self, root: str) -> None:
        """Depth-first over every path of kustomization builds, with builds and heights memoized."""
        limits = self.limits
        builds: dict[str, int] = {}
        heights: dict[str, int] = {}
        frames = [_Frame(root, self.load(root, what="source.path").children)]
        on_path = {root}
        while frames:
            frame = frames[-1]
            if frame.next_child == len(frame.children):
                frames.pop()
                on_path.discard(frame.directory)
                builds[frame.directory], heights[frame.directory] = frame.builds, frame.height
                if frames:
                    frames[-1].builds += frame.builds
                    frames[-1].height = max(frames[-1].height, frame.height + 1)
                continue
            child = frame.children[frame.next_child]
            frame.next_child += 1
            chain = [f.directory or "." for f in frames] + [child or "."]
            if child in on_path:
                cycle = chain[chain.index(child or ".") :]
                raise Stalled(
                    Reason.YAML_REJECTED,
                    f"kustomizations include each other in a cycle: {' -> '.join(cycle)}",
                )
            if len(frames) + heights.get(child, 0) > limits.max_kustomize_depth:
                raise Stalled(
                    Reason.RENDER_TOO_LARGE,
                    f"kustomizations nest deeper than {limits.max_kustomize_depth} levels: "
                    f"{' -> '.join(chain)}",
                )
            if child in builds:
                frame.builds += builds[child]
                frame.height = max(frame.height, heights[child] + 1)
                continue
            node = self.load(child, what=self.nodes[frame.directory].file)
            frames.append(_Frame(child, node.children))
            on_path.add(child)
        if builds[root] > limits.max_kustomizations:
            raise Stalled(
                Reason.RENDER_TOO_LARGE,
                f"kustomize would build {builds[root]} kustomizations from {root or '.'} (a base counts once "
                f"per path that includes it); the limit is {limits.max_kustomizations}",
            )


def check(tree: Tree, root: str, read: Callable[[TreeEntry], bytes], *, limits: Limits) -> None:
    """Vet every kustomization kustomize would build from ``root`` and all they read; ``Stalled`` if not."""
    vetting = _Vetting(tree, read, limits)
    vetting.walk(tree.resolve(root, vetting.read_link))


def _environment(base: Path, limits: Limits) -> dict[str, str]:
    """An environment with no git, no network through proxies, no plugins, and a Go memory target."""
    return {
        **programs.bare_environment(base, limits, directories=("plugins",)),  # no git or helm on PATH
        "GIT_ALLOW_PROTOCOL": "",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
        "KUSTOMIZE_PLUGIN_HOME": str(base / "plugins"),
    }


def _write_checkout(tree: Tree, checkout: Path, read: Callable[[TreeEntry], bytes]) -> None:
    """The commit's files, and its in-tree links to directories as relative links to the resolved path."""

    def read_link(entry: TreeEntry) -> str:
        return read(entry).decode(errors="replace")

    for view in tree.files_under("", read_link):
        target = checkout / view.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(read(view.entry))
    for path, entry in sorted(tree.entries.items()):
        if not entry.is_symlink:
            continue
        real = tree.resolve(path, read_link)
        if real and real not in tree.directories:
            continue  # a link to a file was written above as a copy
        destination = checkout / real if real else checkout
        destination.mkdir(parents=True, exist_ok=True)
        link = checkout / path
        link.parent.mkdir(parents=True, exist_ok=True)
        # ``real`` has no symlink in it, so the OS resolves this link exactly as the tree did.
        link.symlink_to(os.path.relpath(destination, link.parent), target_is_directory=True)


def _out_of_memory(stderr: bytes) -> bool:
    """Whether the Go runtime died for want of memory (the address-space limit it runs under)."""
    text = stderr.decode(errors="replace").lower()
    return "out of memory" in text or "cannot allocate memory" in text


def build(
    tree: Tree,
    root: str,
    read: Callable[[TreeEntry], bytes],
    *,
    limits: Limits,
    command: Sequence[str],
) -> str:
    """Write the tree's files to a private directory and run kustomize on ``root``; return its YAML."""
    executable = programs.executable(command, tool="kustomize", flag="--kustomize")
    shown = root or "."
    with tempfile.TemporaryDirectory(prefix="gitward-kustomize-") as workdir:
        base = Path(workdir)
        base.chmod(0o700)
        checkout = base / "repo"
        _write_checkout(tree, checkout, read)
        (checkout / root).mkdir(parents=True, exist_ok=True)
        env = _environment(base, limits)
        result = processes.run(
            [executable, *command[1:], str(checkout / root)],
            env=env,
            cwd=base,
            timeout=limits.kustomize_timeout,
            max_output=limits.max_rendered_bytes,
            limits=processes.ResourceLimits(
                address_space=limits.kustomize_memory_bytes,
                cpu_seconds=max(1, int(limits.kustomize_timeout)),
                file_size=limits.max_rendered_bytes,
            ),
        )
        if result.timed_out or result.ended is processes.Ended.CPU_LIMIT:
            raise Stalled(
                Reason.RENDER_TOO_LARGE,
                f"kustomize build of {shown} took longer than {limits.kustomize_timeout:g}s",
            )
        if result.over_output:
            raise Stalled(
                Reason.RENDER_TOO_LARGE,
                f"kustomize output of {shown} exceeds the limit of {limits.max_rendered_bytes} bytes",
            )
        if result.code != 0 and _out_of_memory(result.stderr):
            raise Stalled(
                Reason.RENDER_TOO_LARGE,
                f"kustomize build of {shown} needed more than {limits.kustomize_memory_bytes} bytes",
            )
        if result.code != 0:
            message = result.stderr.decode(errors="replace").replace(str(checkout) + "/", "")
            message = message.replace(str(base), "").strip()
            raise Stalled(
                Reason.KUSTOMIZE_BUILD_FAILED, f"kustomize build of {shown} failed: {message[:800]}"
            )
        if len(result.stdout) > limits.max_rendered_bytes:
            raise Stalled(
                Reason.RENDER_TOO_LARGE,
                f"kustomize output of {shown} is {len(result.stdout)} bytes; "
                f"the limit is {limits.max_rendered_bytes}",
            )
        return result.stdout.decode(errors="replace")
