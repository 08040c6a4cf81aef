"""kustomize.check on a fake commit: only what kustomize would read, all of it in the commit, within budgets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from gitward.api.conditions import Reason
from gitward.errors import Stalled
from gitward.render import kustomize
from gitward.render.limits import Limits
from gitward.render.tree import Tree, normalize
from gitward.source.entries import TreeEntry

CONFIGMAP = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n"
BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8)
)


@dataclass
class Commit:
    """A fake commit: files and symlinks, and the list of every blob read."""

    files: dict[str, str]
    links: dict[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    reads: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        entries = []
        for mode, items in (("100644", self.files), ("120000", self.links)):
            for path, content in items.items():
                oid = f"{len(self.blobs):040x}"
                self.blobs[oid] = content.encode()
                entries.append(TreeEntry(path=path, mode=mode, kind="blob", oid=oid, size=len(content)))
        self.tree = Tree(entries, limits=self.limits)

    def read(self, entry: TreeEntry) -> bytes:
        self.reads.append(entry.path)
        return self.blobs[entry.oid]

    def check(self, root: str = "deploy") -> None:
        kustomize.check(self.tree, root, self.read, limits=self.limits)

    def refused(self, root: str = "deploy") -> Stalled:
        with pytest.raises(Stalled) as error:
            self.check(root)
        return error.value


def kustomization(**body: Any) -> str:
    return yaml.safe_dump(body)


REMOTE_FORMS = [
    "https://github.com/org/repo//deploy?ref=v1",
    "http://example.com/cm.yaml",
    "HTTPS://EXAMPLE.COM/cm.yaml",
    "https://127.0.0.1:8443/org/repo.git",
    "github.com/org/repo/deploy?ref=main",
    "github.com/org/repo",
    "github.com:org/repo",
    "gitlab.com/org/repo/base",
    "bitbucket.org/org/repo",
    "example.org/org/repo/base",
    "s3.amazonaws.com/bucket/base",
    "git::https://example.com/repo.git//base",
    "git::example.com/repo",
    "git@github.com:org/repo.git",
    "git@example.com:org/repo",
    "deploy@example.org:repo/base",
    "example.com:org/repo",
    "127.0.0.1:org/repo",
    "ssh://git@example.com/org/repo.git",
    "ssh://example.com:2222/org/repo",
    "file:///etc/kubernetes",
    "file://base",
    "gh:org/repo",
    "oci://registry.example.com/chart",
    "base?ref=main",
    "base?version=v1",
    "org/repo//base",
    "base#main",
    "~/kustomize/base",
    "~root/base",
    "dev.azure.com/org/project/_git/repo",
    "org/project/_git/repo/base",
]
PLACES = {
    "resources": lambda ref: {"resources": [ref]},
    "bases": lambda ref: {"bases": [ref]},
    "components": lambda ref: {"components": [ref]},
    "crds": lambda ref: {"crds": [ref]},
    "patchesStrategicMerge": lambda ref: {"patchesStrategicMerge": [ref]},
    "patches.path": lambda ref: {"patches": [{"path": ref, "target": {"kind": "ConfigMap"}}]},
    "patchesJson6902.path": lambda ref: {"patchesJson6902": [{"path": ref}]},
    "replacements.path": lambda ref: {"replacements": [{"path": ref}]},
    "configMapGenerator.files": lambda ref: {"configMapGenerator": [{"name": "x", "files": [ref]}]},
    "configMapGenerator.files key=": lambda ref: {
        "configMapGenerator": [{"name": "x", "files": [f"k={ref}"]}]
    },
    "secretGenerator.envs": lambda ref: {"secretGenerator": [{"name": "x", "envs": [ref]}]},
    "configMapGenerator.env": lambda ref: {"configMapGenerator": [{"name": "x", "env": ref}]},
    "openapi.path": lambda ref: {"openapi": {"path": ref}},
    "generators": lambda ref: {"generators": [ref]},
    "transformers": lambda ref: {"transformers": [ref]},
    "helmGlobals.chartHome": lambda ref: {"helmGlobals": {"chartHome": ref}},
}


def with_local_copy(files: dict[str, str], ref: str) -> dict[str, str]:
    """Also put a directory with a kustomization (and a file) where the reference would be if it were local."""
    try:
        local = normalize(f"deploy/{ref}", what="test")
    except Stalled:
        return files
    return {
        **files,
        f"{local}/kustomization.yaml": "resources: []\n",
        f"{local}.yaml": CONFIGMAP.format(name="x"),
    }


# kustomize reads "a=b" in generator files as key "a", path "b": there the path is what follows the "=".
CASES = [
    (ref, place)
    for ref in REMOTE_FORMS
    for place in sorted(PLACES)
    if not (place.endswith("files") and "=" in ref)
]


@pytest.mark.parametrize(("ref", "place"), CASES)
def test_every_remote_form_is_refused_wherever_a_path_may_go(ref, place):
    """Any reference kustomize or git could take for a remote is RemoteRefForbidden, even if a local copy exists."""
    commit = Commit(with_local_copy({"deploy/kustomization.yaml": kustomization(**PLACES[place](ref))}, ref))
    error = commit.refused()
    assert error.reason is Reason.REMOTE_REF_FORBIDDEN
    assert "deploy/kustomization.yaml" in error.message
    assert "kustomize would fetch it" in error.message


@pytest.mark.parametrize(
    "ref", ["cm.yaml", "../base", "./base", "sub/dir/cm.yaml", "github.com", "v1.2", "base.d", "..", "."]
)
def test_plain_relative_paths_are_not_taken_for_remotes(ref):
    """Names with dots that kustomize reads as local (no host prefix) are not refused as remote."""
    assert kustomize.remote_form(ref) is None


def test_a_local_path_that_is_not_in_the_commit_is_refused():
    """A missing path would make kustomize look outside the commit: RemoteRefForbidden, saying so."""
    commit = Commit(
        {
            "deploy/kustomization.yaml": kustomization(resources=["cm.yaml", "missing.yaml"]),
            "deploy/cm.yaml": CONFIGMAP.format(name="a"),
        }
    )
    error = commit.refused()
    assert error.reason is Reason.REMOTE_REF_FORBIDDEN
    assert "'missing.yaml' does not exist in the commit" in error.message
    assert "outside the commit" in error.message


def test_a_base_path_that_climbs_out_of_the_repository_is_path_escape():
    """A reference above the repository root is PathEscape, never looked up."""
    commit = Commit({"deploy/kustomization.yaml": kustomization(resources=["../../etc/kubernetes"])})
    assert commit.refused().reason is Reason.PATH_ESCAPE


EVIL = kustomization(resources=["https://example.com/evil.yaml"])


@pytest.mark.parametrize(
    ("files", "links", "bad"),
    [
        (
            {
                "deploy/kustomization.yaml": kustomization(components=["../component"]),
                "component/kustomization.yaml": "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\n"
                + EVIL,
            },
            {},
            "component/kustomization.yaml",
        ),
        (
            {
                "deploy/kustomization.yaml": kustomization(resources=["base"]),
                "shared/kustomization.yaml": EVIL,
            },
            {"deploy/base": "../shared"},
            "shared/kustomization.yaml",
        ),
        (
            {"deploy/kustomization.yaml": kustomization(resources=["../base"]), "base/Kustomization": EVIL},
            {},
            "base/Kustomization",
        ),
        (
            {"deploy/kustomization.yaml": kustomization(resources=["../base"]), "shared/k.yaml": EVIL},
            {"base/kustomization.yaml": "../shared/k.yaml"},
            "base/kustomization.yaml",
        ),
        (
            {
                "deploy/kustomization.yaml": kustomization(resources=["../a"]),
                "a/kustomization.yaml": kustomization(components=["../b"]),
                "b/kustomization.yml": "kind: Component\n" + EVIL,
            },
            {},
            "b/kustomization.yml",
        ),
    ],
    ids=["component", "symlinked-directory", "Kustomization-file", "symlinked-kustomization-file", "nested"],
)
def test_indirect_kustomizations_are_vetted(files, links, bad):
    """Kustomizations reached through components, symlinks or any accepted file name are vetted too."""
    error = Commit(files, links).refused()
    assert error.reason is Reason.REMOTE_REF_FORBIDDEN
    assert bad in error.message


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ("resources: [cm.yaml]\nResources: ['https://example.com/x']\n", "'Resources'"),
        ("resourcse: [cm.yaml]\n", "'resourcse'"),
        ("helmChartz: []\n", "'helmChartz'"),
        ("patches:\n- Path: https://example.com/p.yaml\n", "'Path'"),
        ("openapi: {Path: https://example.com/schema.json}\n", "'Path'"),
        ("configMapGenerator:\n- name: x\n  Files: [https://example.com/f]\n", "'Files'"),
        ("1: [cm.yaml]\n", "'1'"),
    ],
)
def test_unknown_fields_are_refused(body, where):
    """A field kustomize v5 does not define (or spelled otherwise) is YAMLRejected, naming file and field."""
    error = Commit(
        {"deploy/kustomization.yaml": body, "deploy/cm.yaml": CONFIGMAP.format(name="a")}
    ).refused()
    assert error.reason is Reason.YAML_REJECTED
    assert "deploy/kustomization.yaml" in error.message
    assert f"unknown field {where}" in error.message


@pytest.mark.parametrize(
    "body",
    [
        "resources: cm.yaml\n",
        "resources: [[cm.yaml]]\n",
        "resources: [1]\n",
        "patches: {path: p.yaml}\n",
        "- a\n",
    ],
)
def test_fields_of_the_wrong_shape_are_refused(body):
    """A path field that is not a list of strings (or a kustomization that is not a mapping) is YAMLRejected."""
    error = Commit(
        {"deploy/kustomization.yaml": body, "deploy/cm.yaml": CONFIGMAP.format(name="a")}
    ).refused()
    assert error.reason is Reason.YAML_REJECTED


def test_a_directory_without_a_kustomization_is_refused():
    """kustomize fails on a base directory with no kustomization; gitward says so first."""
    error = Commit(
        {"deploy/kustomization.yaml": kustomization(resources=["../base"]), "base/cm.yaml": "x: 1\n"}
    ).refused()
    assert error.reason is Reason.YAML_REJECTED
    assert "no kustomization in 'base'" in error.message


def test_two_kustomization_files_in_one_directory_are_refused():
    """As in kustomize, a directory may hold only one of the accepted kustomization file names."""
    error = Commit({"deploy/kustomization.yaml": "resources: []\n", "deploy/Kustomization": EVIL}).refused()
    assert error.reason is Reason.YAML_REJECTED
    assert "more than one kustomization file" in error.message


def diamond(levels: int) -> dict[str, str]:
    """Two bases per level, each including both bases of the next level: 2^levels paths to the bottom."""
    files = {"deploy/kustomization.yaml": kustomization(resources=["../l1a", "../l1b"])}
    for level in range(1, levels + 1):
        below = [f"../l{level + 1}a", f"../l{level + 1}b"] if level < levels else ["cm.yaml"]
        for side in "ab":
            files[f"l{level}{side}/kustomization.yaml"] = kustomization(resources=below, namePrefix=side)
            if level == levels:
                files[f"l{level}{side}/cm.yaml"] = CONFIGMAP.format(name="leaf")
    return files


def test_an_exponential_diamond_is_render_too_large_after_reading_each_file_once():
    """Diamond bases 12 levels deep (8191 builds) are RenderTooLarge; the check reads each file once."""
    commit = Commit(diamond(12))
    error = commit.refused()
    assert error.reason is Reason.RENDER_TOO_LARGE
    assert "8191" in error.message
    assert str(Limits().max_kustomizations) in error.message
    assert len(commit.reads) == len(set(commit.reads)) == len(commit.files)


def test_a_base_reached_through_two_parents_counts_twice():
    """The build count follows every path: 3 levels of diamonds are 15 builds, over a limit of 14."""
    assert Commit(diamond(3), limits=Limits(max_kustomizations=15)).check() is None
    error = Commit(diamond(3), limits=Limits(max_kustomizations=14)).refused()
    assert error.reason is Reason.RENDER_TOO_LARGE
    assert "build 15 kustomizations" in error.message
    assert "the limit is 14" in error.message


def chain(length: int) -> dict[str, str]:
    files = {"deploy/kustomization.yaml": kustomization(resources=["../c1"])}
    for index in range(1, length + 1):
        below = [f"../c{index + 1}"] if index < length else ["cm.yaml"]
        files[f"c{index}/kustomization.yaml"] = kustomization(resources=below)
    files[f"c{length}/cm.yaml"] = CONFIGMAP.format(name="end")
    return files


def test_nesting_deeper_than_the_limit_is_render_too_large():
    """A chain of bases one level deeper than max_kustomize_depth is RenderTooLarge; at the limit it passes."""
    Commit(chain(4), limits=Limits(max_kustomize_depth=4)).check()
    error = Commit(chain(5), limits=Limits(max_kustomize_depth=4)).refused()
    assert error.reason is Reason.RENDER_TOO_LARGE
    assert "deeper than 4 levels" in error.message


def test_the_depth_limit_holds_for_bases_already_measured():
    """A deep base first reached shallowly, then again from deeper down, still counts its full depth."""
    files = chain(3)
    files["deploy/kustomization.yaml"] = kustomization(resources=["../c1", "../x1"])
    files["x1/kustomization.yaml"] = kustomization(resources=["../x2"])
    files["x2/kustomization.yaml"] = kustomization(resources=["../c1"])
    Commit(files, limits=Limits(max_kustomize_depth=5)).check()
    error = Commit(files, limits=Limits(max_kustomize_depth=4)).refused()
    assert error.reason is Reason.RENDER_TOO_LARGE


@pytest.mark.parametrize(
    ("files", "cycle"),
    [
        (
            {
                "deploy/kustomization.yaml": kustomization(resources=["../a"]),
                "a/kustomization.yaml": kustomization(resources=["../b"]),
                "b/kustomization.yaml": kustomization(resources=["../a"]),
            },
            "a -> b -> a",
        ),
        ({"deploy/kustomization.yaml": kustomization(resources=["."])}, "deploy -> deploy"),
        (
            {
                "deploy/kustomization.yaml": kustomization(resources=["overlay"]),
                "deploy/overlay/kustomization.yaml": kustomization(components=[".."]),
            },
            "deploy -> deploy/overlay -> deploy",
        ),
    ],
)
def test_cycles_are_refused_naming_the_cycle(files, cycle):
    """Kustomizations that include each other are YAMLRejected with the cycle spelled out."""
    error = Commit(files).refused()
    assert error.reason is Reason.YAML_REJECTED
    assert cycle in error.message


def test_an_overlay_on_a_sibling_base_with_every_local_kind_of_reference_is_accepted():
    """A legitimate overlay (../base, patches, generators of ConfigMaps, components, openapi) passes."""
    commit = Commit(
        {
            "base/kustomization.yaml": kustomization(resources=["cm.yaml"], crds=["crd.yaml"]),
            "base/cm.yaml": CONFIGMAP.format(name="app"),
            "base/crd.yaml": "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\n"
            "metadata: {name: x.example.com}\n",
            "component/kustomization.yaml": "apiVersion: kustomize.config.k8s.io/v1alpha1\nkind: Component\n"
            "patches:\n- patch: |-\n    - op: add\n      path: /metadata/labels\n      value: {c: 'yes'}\n"
            "  target: {kind: ConfigMap}\n",
            "deploy/kustomization.yaml": kustomization(
                apiVersion="kustomize.config.k8s.io/v1beta1",
                kind="Kustomization",
                resources=["../base", "extra.yaml"],
                components=["../component"],
                namePrefix="prod-",
                namespace="prod",
                commonLabels={"env": "prod"},
                patches=[{"path": "patch.yaml"}, {"patch": "- op: remove\n  path: /data\n"}],
                patchesStrategicMerge=["smp.yaml", CONFIGMAP.format(name="inline") + "data: {a: b}\n"],
                replacements=[{"path": "replacements.yaml"}],
                configMapGenerator=[
                    {"name": "gen", "files": ["app.properties", "key=data/raw.txt"], "envs": [".env"]}
                ],
                secretGenerator=[{"name": "s", "env": ".env", "type": "Opaque"}],
                openapi={"path": "schema.json"},
                configurations=["config.yaml"],
                images=[{"name": "app", "newTag": "v2"}],
            ),
            "deploy/extra.yaml": CONFIGMAP.format(name="extra"),
            "deploy/patch.yaml": "- op: add\n  path: /data\n  value: {}\n",
            "deploy/smp.yaml": CONFIGMAP.format(name="app"),
            "deploy/replacements.yaml": "- source: {kind: ConfigMap, name: app}\n  targets: []\n",
            "deploy/app.properties": "a=b\n",
            "deploy/data/raw.txt": "raw: {not: yaml, at: all: [\n",
            "deploy/.env": "A=B\n",
            "deploy/schema.json": '{"definitions": {}}',
            "deploy/config.yaml": "namePrefix: []\n",
        }
    )
    commit.check()
    assert (
        "deploy/data/raw.txt" not in commit.reads
    )  # generator data is not YAML; kustomize does not parse it


@pytest.mark.parametrize(
    ("body", "reason", "where"),
    [
        ("patches: [{path: bomb.yaml}]\n", Reason.YAML_REJECTED, "deploy/bomb.yaml#0"),
        ("crds: [dup.yaml]\n", Reason.DUPLICATE_KEY, "deploy/dup.yaml#0"),
        ("openapi: {path: bomb.yaml}\n", Reason.YAML_REJECTED, "deploy/bomb.yaml#0"),
        ("configurations: [dup.yaml]\n", Reason.DUPLICATE_KEY, "deploy/dup.yaml#0"),
        ("replacements: [{path: bomb.yaml}]\n", Reason.YAML_REJECTED, "deploy/bomb.yaml#0"),
        (kustomization(patches=[{"patch": BOMB}]), Reason.YAML_REJECTED, "patches[0].patch (inline)"),
        (
            kustomization(patchesStrategicMerge=[BOMB]),
            Reason.YAML_REJECTED,
            "patchesStrategicMerge[0] (inline)",
        ),
        ("resources: [cm.yaml]\n---\nresources: [https://example.com/x]\n", Reason.YAML_REJECTED, "#1"),
    ],
)
def test_every_yaml_kustomize_parses_goes_through_the_bounded_loader(body, reason, where):
    """Patch, CRD, schema, configuration and replacement files and inline patches are vetted before kustomize."""
    error = Commit(
        {
            "deploy/kustomization.yaml": body,
            "deploy/cm.yaml": CONFIGMAP.format(name="a"),
            "deploy/bomb.yaml": BOMB,
            "deploy/dup.yaml": "a: 1\na: 2\n",
        }
    ).refused()
    assert error.reason is reason
    assert where in error.message


PLUGIN_FILES = {
    "deploy/gen.yaml": "apiVersion: builtin\nkind: ConfigMapGenerator\nmetadata: {name: x}\nliterals: [a=b]\n",
    "deploy/labels.yaml": "apiVersion: builtin\nkind: LabelTransformer\nmetadata: {name: l}\nlabels: {team: a}\n"
    "fieldSpecs: [{path: metadata/labels, create: true}]\n",
    "deploy/exec.yaml": "apiVersion: someteam.example.com/v1\nkind: ChartInflator\nmetadata: {name: x}\n",
    "deploy/krm.yaml": "apiVersion: builtin\nkind: LabelTransformer\nmetadata:\n  name: x\n  annotations:\n"
    "    config.kubernetes.io/function: |\n      container: {image: evil.example.com/fn}\n",
    "deploy/iam.yaml": "apiVersion: builtin\nkind: IAMPolicyGenerator\nmetadata: {name: x}\n",
    "deploy/patch-from.yaml": "apiVersion: builtin\nkind: PatchTransformer\nmetadata: {name: p}\npath: nowhere.yaml\n",
    "plugins/kustomization.yaml": "resources: []\n",
}


@pytest.mark.parametrize(
    "body",
    ["generators: [gen.yaml]\n", "transformers: [labels.yaml]\n", "validators: [labels.yaml]\n"],
)
def test_builtin_transformers_and_generators_from_local_files_are_allowed(body):
    """kustomize's own code configured from a file in the commit runs: no plugin, nothing remote."""
    Commit({"deploy/kustomization.yaml": body, **PLUGIN_FILES}).check()


@pytest.mark.parametrize(
    ("body", "reason", "expected"),
    [
        ("transformers: [../plugins]\n", Reason.PLUGIN_FORBIDDEN, "is a directory"),
        ("generators: [exec.yaml]\n", Reason.PLUGIN_FORBIDDEN, "not one of kustomize's builtin"),
        ("transformers: [krm.yaml]\n", Reason.PLUGIN_FORBIDDEN, "KRM function"),
        ("generators: [iam.yaml]\n", Reason.PLUGIN_FORBIDDEN, "IAMPolicyGenerator"),
        ("transformers: [patch-from.yaml]\n", Reason.REMOTE_REF_FORBIDDEN, "nowhere.yaml"),
        ("helmCharts: [{name: x, valuesFile: gen.yaml}]\n", Reason.PLUGIN_FORBIDDEN, "inflates Helm charts"),
        ("generators: [https://example.com/gen.yaml]\n", Reason.REMOTE_REF_FORBIDDEN, "has a URL scheme"),
        ("generators: [missing.yaml]\n", Reason.REMOTE_REF_FORBIDDEN, "does not exist in the commit"),
        (
            "helmCharts: [{name: x, repo: 'https://charts.example.com'}]\n",
            Reason.REMOTE_REF_FORBIDDEN,
            "URL scheme",
        ),
        (
            "helmChartInflationGenerator: [{chartName: x, chartRepoUrl: 'oci://r.example.com/x'}]\n",
            Reason.REMOTE_REF_FORBIDDEN,
            "URL scheme",
        ),
    ],
)
def test_plugins_helm_and_their_references_are_refused_naming_what_they_are(body, reason, expected):
    """Exec, container and KRM plugins, IAM and Helm are PluginForbidden; a bad reference is found first."""
    error = Commit({"deploy/kustomization.yaml": body, **PLUGIN_FILES}).refused()
    assert error.reason is reason, error.message
    assert expected in error.message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("components: [cm.yaml]\n", "is a file"),
        ("patches: [{path: sub}]\n", "is a directory"),
        ("configMapGenerator: [{name: x, files: [sub]}]\n", "is a directory"),
    ],
)
def test_a_file_where_a_directory_is_needed_or_the_reverse_is_refused(body, expected):
    """Components are directories; patches and generator sources are files: kustomize fails otherwise."""
    error = Commit(
        {
            "deploy/kustomization.yaml": body,
            "deploy/cm.yaml": CONFIGMAP.format(name="a"),
            "deploy/sub/kustomization.yaml": "resources: []\n",
        }
    ).refused()
    assert error.reason is Reason.YAML_REJECTED
    assert expected in error.message


def test_symlinks_out_of_the_repository_in_a_reference_are_refused():
    """A reference through a symlink that leaves the tree is SymlinkOutOfBounds."""
    error = Commit(
        {"deploy/kustomization.yaml": kustomization(resources=["base"])}, {"deploy/base": "../../etc"}
    ).refused()
    assert error.reason is Reason.SYMLINK_OUT_OF_BOUNDS
