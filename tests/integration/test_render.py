"""render.load on real commits: plain YAML, kustomize, and every way a repository can try to misbehave."""

from __future__ import annotations

import time
import tracemalloc

import pytest

from gitward.api.conditions import Reason
from gitward.errors import Stalled
from gitward.render.limits import Limits
from gitward.render.load import load
from gitward.source import git
from support.signing import WorkRepo
from support.toolpaths import kubectl_binary

CONFIGMAP = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  key: value\n"
KUSTOMIZE = (kubectl_binary(), "kustomize")


@pytest.fixture
def work(tmp_path) -> WorkRepo:
    return WorkRepo.create(tmp_path / "work")


def render(work: WorkRepo, path: str = "deploy", **limits: int):
    commit = work.head()
    repo = git.Repository(work.path / ".git", options=git.FetchOptions(cache_root=work.path.parent / "cache"))
    return load(repo, commit, path, limits=Limits(**limits), kustomize_command=KUSTOMIZE)


def refused(work: WorkRepo, path: str = "deploy", **limits: int) -> Stalled:
    with pytest.raises(Stalled) as error:
        render(work, path, **limits)
    return error.value


def test_plain_yaml_multi_document_lists_and_nested_directories(work):
    """Every YAML/JSON file under the path, each document, List items expanded; others skipped."""
    work.commit(
        {
            "deploy/a.yaml": CONFIGMAP.format(name="a") + "---\n" + CONFIGMAP.format(name="b"),
            "deploy/nested/c.yml": "apiVersion: v1\nkind: List\nitems:\n"
            "- {apiVersion: v1, kind: ConfigMap, metadata: {name: c1}}\n"
            "- {apiVersion: v1, kind: ConfigMap, metadata: {name: c2}}\n",
            "deploy/d.json": '{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "d"}}',
            "deploy/README.md": "not a manifest",
            "deploy/.hidden/e.yaml": CONFIGMAP.format(name="hidden"),
            "other/f.yaml": CONFIGMAP.format(name="elsewhere"),
        }
    )
    rendered = render(work)
    assert sorted(m.name for m in rendered.manifests) == ["a", "b", "c1", "c2", "d"]
    assert {m.origin for m in rendered.manifests if m.name == "b"} == {"deploy/a.yaml#1"}
    assert rendered.digest.startswith("sha256:")
    assert not rendered.kustomized


def test_the_digest_depends_on_content_not_file_order(work):
    """Same objects in other files give the same digest; a changed value changes it."""
    work.commit({"deploy/a.yaml": CONFIGMAP.format(name="a"), "deploy/b.yaml": CONFIGMAP.format(name="b")})
    first = render(work).digest
    work.git("rm", "-q", "deploy/a.yaml", "deploy/b.yaml")
    work.commit({"deploy/all.yaml": CONFIGMAP.format(name="b") + "---\n" + CONFIGMAP.format(name="a")})
    assert render(work).digest == first
    work.commit({"deploy/all.yaml": CONFIGMAP.format(name="b")})
    assert render(work).digest != first


def test_kustomize_overlay_on_a_base_in_the_same_repository(work):
    """A kustomization with a local base builds with a real kustomize."""
    work.commit(
        {
            "base/kustomization.yaml": "resources: [cm.yaml]\n",
            "base/cm.yaml": CONFIGMAP.format(name="app"),
            "deploy/kustomization.yaml": "resources: [../base]\nnamePrefix: prod-\n"
            "commonLabels: {env: prod}\n",
        }
    )
    rendered = render(work)
    assert rendered.kustomized
    assert [(m.name, m.obj["metadata"]["labels"]["env"]) for m in rendered.manifests] == [
        ("prod-app", "prod")
    ]


@pytest.mark.parametrize(
    "kustomization",
    [
        "resources:\n- https://github.com/example/repo//deploy?ref=v1\n",
        "resources:\n- github.com/example/repo/deploy?ref=main\n",
        "resources:\n- git::https://example.com/repo.git//base\n",
        "resources:\n- git@github.com:example/repo.git\n",
        "helmCharts: [{name: x, repo: 'https://charts.example.com'}]\n",
        "generators: [plugin.yaml]\n",
        "transformers: [exec.yaml]\n",
        "resources: [cm.yaml]\nconfigMapGenerator:\n- name: x\n  files:\n  - https://example.com/f\n",
    ],
)
def test_remote_bases_and_plugins_are_refused(work, kustomization):
    """Anything kustomize would fetch or run is RemoteRefForbidden, before kustomize runs."""
    work.commit({"deploy/kustomization.yaml": kustomization, "deploy/cm.yaml": CONFIGMAP.format(name="a")})
    assert refused(work).reason is Reason.REMOTE_REF_FORBIDDEN


def test_a_remote_reference_in_a_nested_base_is_found(work):
    """The check follows local bases: a remote reference two levels down is refused too."""
    work.commit(
        {
            "deploy/kustomization.yaml": "resources: [../base]\n",
            "base/kustomization.yaml": "resources: [../deeper]\n",
            "deeper/kustomization.yaml": "resources:\n- https://example.com/evil.yaml\n",
        }
    )
    error = refused(work)
    assert error.reason is Reason.REMOTE_REF_FORBIDDEN
    assert "deeper/kustomization.yaml" in error.message


@pytest.mark.parametrize("path", ["../outside", "/etc", "deploy/../../x"])
def test_a_source_path_outside_the_repository_is_path_escape(work, path):
    """source.path may not leave the repository."""
    work.commit({"deploy/a.yaml": CONFIGMAP.format(name="a")})
    assert refused(work, path).reason is Reason.PATH_ESCAPE


@pytest.mark.parametrize("path", ["deploy", "gone/deeper", "."])
def test_a_source_path_the_commit_does_not_have_renders_nothing_and_says_so(work, path):
    """A vanished source.path is the empty-source case (the prune guard decides), not an escape."""
    work.commit({"other/a.yaml": CONFIGMAP.format(name="a")})
    rendered = render(work, path)
    if path == ".":  # the repository root always exists
        assert rendered.missing == ""
        assert [m.name for m in rendered.manifests] == ["a"]
        return
    assert rendered.manifests == ()
    assert rendered.missing == path


def test_kustomize_resources_outside_the_repository_are_path_escape(work):
    """A kustomization reaching above the repository root is refused before kustomize reads the disk."""
    work.commit({"deploy/kustomization.yaml": "resources: [../../../../../etc/kubernetes]\n"})
    assert refused(work).reason is Reason.PATH_ESCAPE


@pytest.mark.parametrize(
    ("link", "target"),
    [
        ("deploy/passwd.yaml", "/etc/passwd"),
        ("deploy/up.yaml", "../../../../etc/passwd"),
        ("deploy/dir", "/etc"),
    ],
)
def test_symlinks_out_of_the_repository_are_refused(work, link, target):
    """A symlink whose target leaves the repository is SymlinkOutOfBounds, never read."""
    work.commit({"deploy/a.yaml": CONFIGMAP.format(name="a")})
    (work.path / link).symlink_to(target)
    work.git("add", link)
    work.commit(message="add link")
    assert refused(work).reason is Reason.SYMLINK_OUT_OF_BOUNDS


def test_symlinks_inside_the_repository_are_followed(work):
    """A symlink to another file of the repository is read as that file."""
    work.commit({"shared/cm.yaml": CONFIGMAP.format(name="shared")})
    (work.path / "deploy").mkdir()
    (work.path / "deploy/cm.yaml").symlink_to("../shared/cm.yaml")
    work.git("add", "deploy/cm.yaml")
    work.commit(message="link")
    assert [m.name for m in render(work).manifests] == ["shared"]


def test_a_symlinked_source_path_that_escapes_is_refused(work):
    """The source path itself being a symlink out of the repository is refused too."""
    work.commit({"x.yaml": CONFIGMAP.format(name="x")})
    (work.path / "deploy").symlink_to("/etc")
    work.git("add", "deploy")
    work.commit(message="link")
    assert refused(work).reason is Reason.SYMLINK_OUT_OF_BOUNDS


def test_size_file_count_and_document_limits(work):
    """Too many bytes or files are ManifestTooLarge and too many documents RenderTooLarge, naming the file."""
    work.commit({f"deploy/{i}.yaml": CONFIGMAP.format(name=f"cm{i}") for i in range(5)})
    assert refused(work, max_files=4).reason is Reason.MANIFEST_TOO_LARGE
    assert refused(work, max_total_bytes=200).reason is Reason.MANIFEST_TOO_LARGE
    big = refused(work, max_file_bytes=50)
    assert big.reason is Reason.MANIFEST_TOO_LARGE
    assert "deploy/" in big.message
    assert refused(work, max_documents=4).reason is Reason.RENDER_TOO_LARGE


BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8)
)


def test_a_yaml_bomb_is_refused_fast_with_bounded_memory(work):
    """A billion-laughs document is YAMLRejected in well under a second, using little memory."""
    work.commit({"deploy/ok.yaml": CONFIGMAP.format(name="ok"), "deploy/zbomb.yaml": BOMB})
    tracemalloc.start()
    started = time.perf_counter()
    error = refused(work)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert error.reason is Reason.YAML_REJECTED
    assert "deploy/zbomb.yaml#0" in error.message
    assert elapsed < 0.5
    assert peak < 20 * 1024 * 1024


@pytest.mark.parametrize(
    ("content", "reason", "where"),
    [
        (CONFIGMAP.format(name="x") + "---\nkey: 1\nkey: 2\n", Reason.DUPLICATE_KEY, "#1"),
        ("[" * 200 + "]" * 200 + "\n", Reason.YAML_REJECTED, "#0"),
        (CONFIGMAP.format(name="x") + "---\n- just\n- a list\n", Reason.YAML_REJECTED, "#1"),
        (BOMB, Reason.YAML_REJECTED, "#0"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n", Reason.YAML_REJECTED, "#0"),
        ("apiVersion: v1\nkind: [ConfigMap\n", Reason.YAML_REJECTED, "#0"),
        ("x: !!python/object/apply:os.system ['touch /tmp/pwned']\n", Reason.YAML_REJECTED, "#0"),
        ("base: &b {a: 1}\nderived:\n  <<: *b\n", Reason.YAML_REJECTED, "#0"),
    ],
)
def test_malformed_yaml_names_file_and_document(work, content, reason, where):
    """Duplicate keys, deep nesting, non-objects, missing fields, bad syntax, tags, merge keys."""
    work.commit({"deploy/bad.yaml": content})
    error = refused(work)
    assert error.reason is reason
    assert f"deploy/bad.yaml{where}" in error.message


def test_kustomize_inputs_go_through_the_same_yaml_checks(work):
    """Files a kustomization reads are vetted by the bounded loader before kustomize sees them."""
    work.commit(
        {
            "deploy/kustomization.yaml": "resources: [cm.yaml]\n",
            "deploy/cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k: v, k: w}\n",
        }
    )
    error = refused(work)
    assert error.reason is Reason.DUPLICATE_KEY
    assert "deploy/cm.yaml#0" in error.message


def test_a_yaml_bomb_behind_a_kustomization_is_refused_before_kustomize(work):
    """A bomb in a kustomize resource is caught by gitward's loader, not handed to kustomize."""
    work.commit({"deploy/kustomization.yaml": "resources: [bomb.yaml]\n", "deploy/bomb.yaml": BOMB})
    error = refused(work)
    assert error.reason is Reason.YAML_REJECTED
    assert "deploy/bomb.yaml#0" in error.message


def test_a_kustomization_kustomize_refuses_is_kustomize_build_failed(work):
    """kustomize's own error (the same object from two files) has its own reason, and kustomize's message."""
    work.commit(
        {
            "deploy/kustomization.yaml": "resources: [a.yaml, b.yaml]\n",
            "deploy/a.yaml": CONFIGMAP.format(name="same"),
            "deploy/b.yaml": CONFIGMAP.format(name="same"),
        }
    )
    error = refused(work)
    assert error.reason is Reason.KUSTOMIZE_BUILD_FAILED, error.message
    assert "kustomize build of deploy failed" in error.message


def test_generate_name_says_what_to_write_instead(work):
    """An object with only metadata.generateName (another tool's hook Jobs) is told to use metadata.name."""
    work.commit(
        {"deploy/job.yaml": "apiVersion: batch/v1\nkind: Job\nmetadata: {generateName: migrate-}\nspec: {}\n"}
    )
    error = refused(work)
    assert error.reason is Reason.YAML_REJECTED
    assert "metadata.generateName is not supported" in error.message
    assert "give it a metadata.name instead" in error.message


def test_a_builtin_transformer_configured_from_a_local_file_renders(work):
    """`transformers: [labels.yaml]` with a builtin LabelTransformer is kustomize's own code: it runs."""
    work.commit(
        {
            "deploy/kustomization.yaml": "resources: [cm.yaml]\ntransformers: [labels.yaml]\n",
            "deploy/cm.yaml": CONFIGMAP.format(name="labelled"),
            "deploy/labels.yaml": (
                "apiVersion: builtin\nkind: LabelTransformer\nmetadata: {name: team}\nlabels: {team: a}\n"
                "fieldSpecs: [{path: metadata/labels, create: true}]\n"
            ),
        }
    )
    rendered = render(work)
    assert [m.obj["metadata"]["labels"] for m in rendered.manifests] == [{"team": "a"}]


def test_a_plugin_that_is_not_builtin_is_plugin_forbidden(work):
    """An exec/Go plugin configuration (any apiVersion other than builtin) is refused naming what it is."""
    work.commit(
        {
            "deploy/kustomization.yaml": "resources: [cm.yaml]\ngenerators: [gen.yaml]\n",
            "deploy/cm.yaml": CONFIGMAP.format(name="x"),
            "deploy/gen.yaml": "apiVersion: someteam.example.com/v1\nkind: SecretsFromVault\nmetadata: {name: v}\n",
        }
    )
    error = refused(work)
    assert error.reason is Reason.PLUGIN_FORBIDDEN
    assert "SecretsFromVault" in error.message
