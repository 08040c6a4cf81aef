"""API paths: every segment quoted, anything that could name another path refused before a request."""

from __future__ import annotations

from unittest import mock
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitward.api.refs import ObjectRef
from gitward.kube.objects import APIError, InvalidPathSegment, Objects, Resource

SECRETS = Resource("", "v1", "Secret", "secrets", namespaced=True)
DEPLOYMENTS = Resource("apps", "v1", "Deployment", "deployments", namespaced=True)
CLUSTER_ROLES = Resource("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", namespaced=False)


def test_plain_paths_are_unchanged():
    """Valid names give the same paths as before quoting: collection, object, cluster-scoped, core group."""
    assert SECRETS.path(namespace="team-a") == "/api/v1/namespaces/team-a/secrets"
    assert SECRETS.path(namespace="team-a", name="web-hook") == "/api/v1/namespaces/team-a/secrets/web-hook"
    assert (
        DEPLOYMENTS.path(namespace="team-a", name="web") == "/apis/apps/v1/namespaces/team-a/deployments/web"
    )
    assert DEPLOYMENTS.path(namespace=None) == "/apis/apps/v1/deployments"
    assert CLUSTER_ROLES.path(namespace="ignored", name="view") == (
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/view"
    )
    assert SECRETS.path(namespace="team-a", name="a.b-c.d") == "/api/v1/namespaces/team-a/secrets/a.b-c.d"


@pytest.mark.parametrize(
    "hostile",
    ["a/b", "..", ".", "%2e%2e", "%2F", "..%2F..%2Fsecrets", "", "x" * 254, "x" * 300, "/", "a\ud800"],
)
def test_hostile_names_are_refused(hostile):
    """Names that could name another path (slash, dot segments, pre-encoded, empty, over 253) are refused."""
    with pytest.raises(InvalidPathSegment) as refused:
        SECRETS.path(namespace="team-a", name=hostile)
    assert isinstance(refused.value, ValueError)
    assert isinstance(refused.value, APIError)
    assert refused.value.status == 400
    with pytest.raises(InvalidPathSegment):
        SECRETS.path(namespace=hostile or "a/b", name="web")


@pytest.mark.parametrize(
    ("name", "segment"),
    [
        ("x?watch=true", "x%3Fwatch%3Dtrue"),
        ("x#y", "x%23y"),
        ("a b", "a%20b"),
        ("é", "%C3%A9"),
        ("a;b", "a%3Bb"),
        ("a\\b", "a%5Cb"),
        ("...", "..."),
        ("x" * 253, "x" * 253),
    ],
)
def test_delimiters_are_quoted_into_the_name(name, segment):
    """A query, fragment or other delimiter in a name stays inside its segment, percent-encoded."""
    path = SECRETS.path(namespace="team-a", name=name)
    assert path == f"/api/v1/namespaces/team-a/secrets/{segment}"
    assert "?" not in path
    assert "#" not in path


@pytest.mark.parametrize(
    "resource",
    [
        Resource("a/b", "v1", "X", "xs", namespaced=True),
        Resource("..", "v1", "X", "xs", namespaced=True),
        Resource("apps", "", "X", "xs", namespaced=True),
        Resource("apps", "v1/../../api", "X", "xs", namespaced=True),
        Resource("apps", "v1", "X", "xs/../../secrets", namespaced=True),
        Resource("apps", "v1", "X", "", namespaced=True),
        Resource("apps", "v1", "X", "%2e%2e", namespaced=True),
    ],
)
def test_group_version_and_plural_are_checked_too(resource):
    """Group, version and plural (from discovery or a manifest's apiVersion) are refused like names."""
    with pytest.raises(InvalidPathSegment):
        resource.path(namespace="team-a", name="web")


def test_group_version_and_plural_are_quoted():
    """Unusual but single-segment group, version and plural values are percent-encoded, not interpreted."""
    odd = Resource("ex?ample.com", "v1#x", "X", "things;a", namespaced=False)
    assert odd.path(namespace=None, name="n") == "/apis/ex%3Fample.com/v1%23x/things%3Ba/n"


class RecordingApi:
    """Stands in for the client: records every request path the Objects layer asks for."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def request(self, _method, path, **_):
        self.paths.append(path)
        discovery = b'{"resources": [{"name": "secrets", "kind": "Secret", "namespaced": true}]}'
        return mock.Mock(status=200, reason="OK", headers={}, read=mock.Mock(return_value=discovery))


@pytest.mark.parametrize(
    "call",
    [
        lambda objects: objects.get(ObjectRef("", "v1", "Secret", "team-a", "../../../apis")),
        lambda objects: objects.delete(ObjectRef("", "v1", "Secret", "team-a", "")),
        lambda objects: objects.delete(ObjectRef("", "v1", "Secret", "%2e%2e", "web")),
        lambda objects: objects.merge_patch(
            ObjectRef("", "v1", "Secret", "team-a", "web"), {}, subresource="status/../../x"
        ),
        lambda objects: objects.merge_patch(
            ObjectRef("", "v1", "Secret", "team-a", "web"), {}, subresource=".."
        ),
        lambda objects: objects.get(ObjectRef("a/b", "v1", "Secret", "team-a", "web")),
        lambda objects: objects.list("../v1", "Secret", "team-a"),
        lambda objects: objects.preferred_resource("..", "Thing"),
        lambda objects: objects.preferred_resource("a/b", "Thing"),
    ],
)
def test_objects_refuse_before_any_request(call):
    """The Objects layer refuses hostile names, subresources, groups and versions before sending anything."""
    api = RecordingApi()
    with pytest.raises(InvalidPathSegment):
        call(Objects(api))
    assert all(path == "/api/v1" for path in api.paths), api.paths


def test_objects_request_quoted_paths():
    """Discovery, get and a subresource patch go to quoted paths of exactly one segment per value."""
    api = RecordingApi()
    objects = Objects(api)
    objects.get(ObjectRef("", "v1", "Secret", "team-a", "x?watch=true"))
    objects.merge_patch(ObjectRef("", "v1", "Secret", "team-a", "web"), {}, subresource="status")
    assert api.paths == [
        "/api/v1",
        "/api/v1/namespaces/team-a/secrets/x%3Fwatch%3Dtrue",
        "/api/v1/namespaces/team-a/secrets/web/status",
    ]


@settings(max_examples=200, deadline=None, derandomize=True)
@given(name=st.text(max_size=300), namespace=st.one_of(st.none(), st.text(max_size=70)))
def test_accepted_names_stay_one_segment(name, namespace):
    """For any text accepted as a name, the path has the expected segments and the name's unquotes back to it."""
    try:
        path = DEPLOYMENTS.path(namespace=namespace, name=name)
    except InvalidPathSegment:
        assert (
            name in {"", ".", ".."}
            or "/" in name
            or "%" in name
            or len(name) > 253
            or namespace in {".", ".."}
            or "/" in (namespace or "")
            or "%" in (namespace or "")
            or len(namespace or "") > 253
        )
        return
    segments = path.split("/")
    scoped = bool(namespace)
    assert segments[:4] == ["", "apis", "apps", "v1"]
    assert len(segments) == (8 if scoped else 6)
    if scoped:
        assert segments[4] == "namespaces"
        assert unquote(segments[5], errors="strict") == namespace
    assert segments[-2] == "deployments"
    assert unquote(segments[-1], errors="strict") == name
    assert all(segment not in {".", ".."} for segment in segments)
    assert "?" not in path
    assert "#" not in path
