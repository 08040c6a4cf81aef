"""Properties of kustomize reference vetting over arbitrary and remote-looking strings."""

from __future__ import annotations

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gitward.api.conditions import Reason
from gitward.errors import Stalled
from gitward.render import kustomize
from gitward.render.limits import Limits
from gitward.render.tree import Tree, normalize
from gitward.source.entries import TreeEntry

LIMITS = Limits()
FILES = {
    "deploy/kustomization.yaml": "resources: []\n",
    "deploy/cm.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
    "deploy/sub/x.yaml": "a: 1\n",
    "base/kustomization.yaml": "resources: []\n",
    "github.com/org/repo/kustomization.yaml": "resources: []\n",
}
LINKS = {
    "deploy/base": "../base",
    "deploy/loop": "loop",
    "deploy/out": "../../etc",
    "deploy/abs": "/etc/passwd",
    "deploy/cm-link.yaml": "cm.yaml",
}
SEGMENT = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,8}", fullmatch=True)
PATH = st.lists(SEGMENT, min_size=1, max_size=4).map("/".join)
HOST = st.sampled_from(
    ["github.com", "gitlab.com", "example.org", "dev.azure.com", "s3.amazonaws.com", "127.0.0.1", "[::1]"]
)
NAME = st.sampled_from(["git", "deploy", "x", "user-1"])
REMOTE = st.one_of(
    st.builds(
        "{}://{}/{}".format,
        st.sampled_from(["https", "http", "ssh", "file", "git", "oci", "s3", "HTTPS", "git+ssh"]),
        HOST,
        PATH,
    ),
    st.builds("{}@{}:{}".format, NAME, HOST, PATH),
    st.builds("{}:{}".format, HOST, PATH),
    st.builds("{}/{}".format, HOST.filter(lambda host: "." in host and ":" not in host), PATH),
    st.builds("{}{}".format, st.sampled_from(["git::", "gh:", "git::https://", "github.com:"]), PATH),
    st.builds("{}?{}={}".format, PATH, st.sampled_from(["ref", "version", "timeout", "submodules"]), SEGMENT),
    st.builds("{}//{}".format, PATH, PATH),
    st.builds("~/{}".format, PATH),
    st.builds("{}#{}".format, PATH, SEGMENT),
    st.builds("{}/_git/{}".format, PATH, PATH),
)
PATHISH = st.text(alphabet="./:@?#~_=abgh-\\ \n\0", max_size=24)
EXISTING = st.sampled_from(
    [
        "cm.yaml",
        "../base",
        "base",
        "sub/x.yaml",
        "./cm-link.yaml",
        "sub/../cm.yaml",
        ".",
        "base/kustomization.yaml",
    ]
)
ANY = st.one_of(
    st.text(max_size=40), PATHISH, REMOTE, PATH, EXISTING, st.builds("{}{}".format, EXISTING, PATHISH)
)


def commit(extra: dict[str, str] | None = None) -> tuple[Tree, dict[str, bytes]]:
    blobs: dict[str, bytes] = {}
    entries = []
    for mode, items in (("100644", {**FILES, **(extra or {})}), ("120000", LINKS)):
        for path, content in items.items():
            oid = f"{len(blobs):040x}"
            blobs[oid] = content.encode()
            entries.append(TreeEntry(path=path, mode=mode, kind="blob", oid=oid, size=len(content)))
    return Tree(entries, limits=LIMITS), blobs


def vet(tree: Tree, blobs: dict[str, bytes], ref: str) -> str | None:
    """The vetted path, or None when refused with ``Stalled`` (anything else escapes and fails the test)."""
    try:
        return kustomize.vet_reference(
            tree, "deploy", ref, lambda entry: blobs[entry.oid].decode(), what="deploy/kustomization.yaml: x"
        )
    except Stalled:
        return None


@settings(derandomize=True, deadline=None, max_examples=300)
@given(ANY)
def test_a_reference_is_an_existing_in_tree_path_or_stalled(ref):
    """Any string is either accepted as a relative, normalized, existing in-tree path or refused with Stalled."""
    tree, blobs = commit()
    real = vet(tree, blobs, ref)
    if real is None:
        return
    assert kustomize.remote_form(ref) is None
    assert not ref.startswith(("/", "~"))
    assert not any(mark in ref for mark in (":", "@", "?", "#", "//", "\0"))
    assert real == normalize(real, what="vetted path")  # relative, no '.', '..' or empty segments
    entry = tree.entries.get(real)
    assert real == "" or real in tree.directories or (entry is not None and entry.is_file)


@settings(derandomize=True, deadline=None, max_examples=300)
@given(REMOTE)
def test_remote_looking_references_are_refused_even_when_a_local_copy_exists(ref):
    """A remote-looking reference is RemoteRefForbidden whatever the tree holds under that name."""
    try:
        local = normalize(f"deploy/{ref}", what="test")
        extra = {f"{local}/kustomization.yaml": "resources: []\n", f"{local}/x.yaml": "a: 1\n"}
    except Stalled:
        extra = {}
    tree, blobs = commit(extra)
    assert kustomize.remote_form(ref) is not None
    with pytest.raises(Stalled) as error:
        kustomize.vet_reference(tree, "deploy", ref, lambda entry: blobs[entry.oid].decode(), what="x")
    assert error.value.reason is Reason.REMOTE_REF_FORBIDDEN


@settings(derandomize=True, deadline=None, max_examples=300)
@given(st.lists(ANY, min_size=1, max_size=4))
def test_check_on_arbitrary_kustomization_entries_accepts_or_stalls(refs):
    """A kustomization listing arbitrary strings in resources and patches is vetted or Stalled, nothing else."""
    body = yaml.safe_dump({"resources": refs, "patches": [{"path": ref} for ref in refs]})
    tree, blobs = commit({"deploy/kustomization.yaml": body})
    try:
        kustomize.check(tree, "deploy", lambda entry: blobs[entry.oid], limits=LIMITS)
    except Stalled:
        return
    for ref in refs:
        assert kustomize.remote_form(ref) is None
