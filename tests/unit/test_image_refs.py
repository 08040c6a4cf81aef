"""Image references read exactly as docker/distribution reads them, and every place a workload names an image."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gitward.images.refs import (
    POD_SPEC_PATHS,
    ImageField,
    InvalidImageReferenceError,
    format_path,
    image_fields,
    parse_image_ref,
    replace_images,
)

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32


@pytest.mark.parametrize(
    ("written", "registry", "repository", "tag", "digest"),
    [
        ("nginx", "docker.io", "library/nginx", "latest", None),
        ("nginx:1.25", "docker.io", "library/nginx", "1.25", None),
        ("library/nginx", "docker.io", "library/nginx", "latest", None),
        ("docker.io/nginx", "docker.io", "library/nginx", "latest", None),
        ("index.docker.io/nginx:1", "docker.io", "library/nginx", "1", None),
        ("docker.io/library/nginx", "docker.io", "library/nginx", "latest", None),
        ("acme/web", "docker.io", "acme/web", "latest", None),
        ("a/b/c/d", "docker.io", "a/b/c/d", "latest", None),
        ("ghcr.io/acme/web:v1.2.3", "ghcr.io", "acme/web", "v1.2.3", None),
        ("ghcr.io/web", "ghcr.io", "web", "latest", None),  # library/ is Docker Hub's only
        ("localhost/web", "localhost", "web", "latest", None),
        ("localhost:5000/team/web:dev", "localhost:5000", "team/web", "dev", None),
        ("127.0.0.1:5000/team-a/web@" + DIGEST, "127.0.0.1:5000", "team-a/web", None, DIGEST),
        ("[::1]:5000/web", "[::1]:5000", "web", "latest", None),
        ("registry.example.com:443/a/b", "registry.example.com:443", "a/b", "latest", None),
        ("Registry.Example.com/web", "Registry.Example.com", "web", "latest", None),  # hosts may be uppercase
        ("UPPER/web", "UPPER", "web", "latest", None),  # an uppercase first component is a host
        ("nginx@" + DIGEST, "docker.io", "library/nginx", None, DIGEST),
        ("nginx:1.25@" + DIGEST, "docker.io", "library/nginx", "1.25", DIGEST),  # tag kept, ignored
        ("foo__bar/a.b_c-d---e", "docker.io", "foo__bar/a.b_c-d---e", "latest", None),
        ("web:" + "v" * 128, "docker.io", "library/web", "v" * 128, None),
        ("web:_private.TAG-1", "docker.io", "library/web", "_private.TAG-1", None),
        ("ghcr.io/" + "a" * 255, "ghcr.io", "a" * 255, "latest", None),  # the limit is on the path alone
        (
            "my_registry.com/web",
            "my_registry.com",
            "web",
            "latest",
            None,
        ),  # a host the grammar reads as a path
    ],
)
def test_valid_references_are_normalised_as_distribution_does(written, registry, repository, tag, digest):
    ref = parse_image_ref(written)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    assert ref.name == f"{registry}/{repository}"
    assert ref.written == written
    assert ref.pinned is (digest is not None)
    assert ref.reference == (digest or tag)


@pytest.mark.parametrize(
    ("written", "complaint"),
    [
        ("", "empty"),
        ("Nginx", "must be lowercase"),
        ("acme/Web", "must be lowercase"),
        ("ghcr.io/Acme/web", "must be lowercase"),
        ("nginx:", "not a valid image reference"),
        (":latest", "not a valid image reference"),
        ("nginx:tag:tag", "not a valid image reference"),
        ("nginx@sha256:abc", "not a valid image reference"),  # under the 32 hex characters of the grammar
        ("nginx@sha256:" + "a" * 63, "64 lowercase hexadecimal"),
        ("nginx@sha256:" + "a" * 65, "64 lowercase hexadecimal"),
        ("nginx@sha256:" + "A" * 64, "64 lowercase hexadecimal"),
        ("nginx@sha512:" + "a" * 128, "only sha256"),
        ("nginx@md5:" + "a" * 32, "unknown digest algorithm"),
        ("nginx@" + "a" * 64, "not a valid image reference"),
        ("a" * 64, "image ID"),
        ("foo//bar", "not a valid image reference"),
        ("foo/", "not a valid image reference"),
        ("/foo", "not a valid image reference"),
        ("-foo", "not a valid image reference"),
        ("foo-", "not a valid image reference"),
        ("_foo", "not a valid image reference"),
        ("foo___bar", "not a valid image reference"),
        ("foo._bar", "not a valid image reference"),
        ("foo bar", "not a valid image reference"),
        (" nginx", "not a valid image reference"),
        ("nginx\n", "not a valid image reference"),  # Python's $ would have let this through
        ("nginx:v1\n", "not a valid image reference"),
        ("localhost:abc/foo", "not a valid image reference"),
        ("https://ghcr.io/acme/web", "not a valid image reference"),
        ("ngïnx", "not a valid image reference"),
        ("web:v1é", "not a valid image reference"),  # Go's \w is ASCII
        ("web:" + "v" * 129, "not a valid image reference"),
        ("web:-v1", "not a valid image reference"),
        ("ghcr.io/acme/web@" + DIGEST + "x", "not a valid image reference"),
        ("ghcr.io/" + "a" * 256, "longer than 255"),
        ("a" * 256, "longer than 255"),
        ("my_registry.com/" + "a" * 250, "longer than 255"),  # distribution counts such a host in
        ("ghcr.io/acme/web:" + "v" * 2000, "longer than 1024"),
        ("[::1/web", "not a valid image reference"),
    ],
)
def test_malformed_references_are_refused_with_the_reason(written, complaint):
    with pytest.raises(InvalidImageReferenceError, match=complaint):
        parse_image_ref(written)


def test_a_huge_hostile_string_is_refused_quickly():
    """A length check comes before the grammar, so the regular expression never sees a megabyte."""
    with pytest.raises(InvalidImageReferenceError, match="longer than"):
        parse_image_ref("a" * 1_000_000 + "!")


def test_pinning_keeps_the_reference_as_written():
    assert parse_image_ref("nginx:1.25").with_digest(DIGEST) == f"nginx:1.25@{DIGEST}"
    assert parse_image_ref("nginx").with_digest(DIGEST) == f"nginx@{DIGEST}"
    assert parse_image_ref("ghcr.io/acme/web:v1").with_digest(DIGEST) == f"ghcr.io/acme/web:v1@{DIGEST}"
    with pytest.raises(ValueError, match="already pinned"):
        parse_image_ref(f"nginx@{DIGEST}").with_digest(OTHER)
    with pytest.raises(ValueError, match="not a sha256 digest"):
        parse_image_ref("nginx").with_digest("sha256:../../etc")


def test_a_pinned_written_reference_parses_to_the_digest_it_was_pinned_to():
    for written in ("nginx", "nginx:1.25", "ghcr.io/acme/web:v1", "localhost:5000/a/b"):
        pinned = parse_image_ref(parse_image_ref(written).with_digest(DIGEST))
        assert pinned.digest == DIGEST
        assert pinned.name == parse_image_ref(written).name


@given(st.text(max_size=300))
def test_any_text_parses_or_is_refused_never_crashes(text):
    try:
        ref = parse_image_ref(text)
    except InvalidImageReferenceError:
        return
    again = parse_image_ref(str(ref))  # the normalised form is itself a reference to the same image
    assert (again.registry, again.repository, again.digest) == (ref.registry, ref.repository, ref.digest)


@given(
    st.from_regex(r"[a-z0-9]{1,8}(?:[._-][a-z0-9]{1,8}){0,2}(?:/[a-z0-9]{1,8}){0,2}", fullmatch=True),
    st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)),
)
def test_generated_valid_names_parse(name, tag):
    written = name if tag is None else f"{name}:{tag}"
    ref = parse_image_ref(written)
    assert ref.tag == (tag or "latest")
    assert ref.name.endswith(name)


# ------------------------------------------------------------------------------------------- image_fields


def pod_spec(**lists):
    return {"containers": [{"name": "app", "image": "ghcr.io/acme/app:1"}], **lists}


def workload(api_version, kind, spec_path, spec):
    obj = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}}
    current = obj
    for key in spec_path[:-1]:
        current = current.setdefault(key, {})
    current[spec_path[-1]] = spec
    return obj


KINDS = [
    ("v1", "Pod", ("spec",)),
    ("v1", "PodTemplate", ("template", "spec")),
    ("v1", "ReplicationController", ("spec", "template", "spec")),
    ("apps/v1", "Deployment", ("spec", "template", "spec")),
    ("apps/v1", "StatefulSet", ("spec", "template", "spec")),
    ("apps/v1", "DaemonSet", ("spec", "template", "spec")),
    ("apps/v1", "ReplicaSet", ("spec", "template", "spec")),
    ("extensions/v1beta1", "Deployment", ("spec", "template", "spec")),
    ("batch/v1", "Job", ("spec", "template", "spec")),
    ("batch/v1", "CronJob", ("spec", "jobTemplate", "spec", "template", "spec")),
]


@pytest.mark.parametrize(("api_version", "kind", "path"), KINDS)
def test_every_workload_kind_yields_every_container_list(api_version, kind, path):
    spec = {
        "initContainers": [{"name": "init", "image": "ghcr.io/acme/init:1"}],
        "containers": [
            {"name": "app", "image": "ghcr.io/acme/app:1"},
            {"name": "sidecar", "image": "ghcr.io/acme/sidecar:1"},
        ],
        "ephemeralContainers": [{"name": "debug", "image": "ghcr.io/acme/debug:1"}],
    }
    found = image_fields(workload(api_version, kind, path, spec))
    prefix = format_path(path)
    assert [(f.location, f.image, f.container) for f in found] == [
        (f"{prefix}.initContainers[0].image", "ghcr.io/acme/init:1", "init"),
        (f"{prefix}.containers[0].image", "ghcr.io/acme/app:1", "app"),
        (f"{prefix}.containers[1].image", "ghcr.io/acme/sidecar:1", "sidecar"),
        (f"{prefix}.ephemeralContainers[0].image", "ghcr.io/acme/debug:1", "debug"),
    ]
    assert all(not f.problem for f in found)


def test_every_kind_the_table_knows_is_tested():
    tested = {f"{a.rpartition('/')[0]}/{k}" if "/" in a else k for a, k, _ in KINDS}
    assert {k for k in POD_SPEC_PATHS if not k.startswith("extensions/")} <= tested


@pytest.mark.parametrize(
    "obj",
    [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"image": "evil"}},
        {"apiVersion": "example.com/v1", "kind": "Deployment", "spec": {"template": {"spec": pod_spec()}}},
        {"apiVersion": "apps/v1", "kind": "Deployment"},  # no spec: the API server refuses it
        {"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"template": {}}},
        {"apiVersion": "v1", "kind": "Pod", "spec": {"containers": None}},
    ],
)
def test_objects_without_a_pod_spec_have_no_images(obj):
    assert image_fields(obj) == []


@pytest.mark.parametrize(
    ("spec", "location", "problem"),
    [
        ({"containers": [{"name": "a", "image": 7}]}, "spec.containers[0].image", "is not a string (int)"),
        (
            {"containers": [{"name": "a", "image": ["x"]}]},
            "spec.containers[0].image",
            "is not a string (list)",
        ),
        (
            {"containers": [{"name": "a", "image": {"x": 1}}]},
            "spec.containers[0].image",
            "is not a string (dict)",
        ),
        (
            {"containers": [{"name": "a", "image": True}]},
            "spec.containers[0].image",
            "is not a string (bool)",
        ),
        ({"containers": [{"name": "a"}]}, "spec.containers[0].image", "is missing"),
        ({"containers": {"name": "a", "image": "x"}}, "spec.containers", "is not a list of containers"),
        ({"containers": "nginx"}, "spec.containers", "is not a list of containers"),
        ({"initContainers": ["nginx"]}, "spec.initContainers[0]", "is not a container object"),
    ],
)
def test_malformed_image_fields_are_reported_not_crashed_on(spec, location, problem):
    [found] = image_fields({"apiVersion": "v1", "kind": "Pod", "spec": spec})
    assert found.image is None
    assert found.location == location
    assert problem in found.problem


@pytest.mark.parametrize(
    ("obj", "location"),
    [
        ({"apiVersion": "v1", "kind": "Pod", "spec": "nginx"}, "spec"),
        ({"apiVersion": "apps/v1", "kind": "Deployment", "spec": ["x"]}, "spec"),
        ({"apiVersion": "apps/v1", "kind": "Deployment", "spec": {"template": "x"}}, "spec.template"),
        (
            {"apiVersion": "batch/v1", "kind": "CronJob", "spec": {"jobTemplate": {"spec": 3}}},
            "spec.jobTemplate.spec",
        ),
    ],
)
def test_a_malformed_pod_spec_is_a_problem_not_an_empty_list(obj, location):
    [found] = image_fields(obj)
    assert found.location == location
    assert found.problem == "is not an object"


def test_replacing_images_copies_the_object_and_changes_only_those_paths():
    obj = workload(
        "apps/v1",
        "Deployment",
        ("spec", "template", "spec"),
        {"containers": [{"name": "a", "image": "nginx:1"}, {"name": "b", "image": "redis:7"}]},
    )
    [first, second] = image_fields(obj)
    replaced = replace_images(obj, {second.path: f"redis:7@{DIGEST}"})
    assert replaced["spec"]["template"]["spec"]["containers"][1]["image"] == f"redis:7@{DIGEST}"
    assert replaced["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1"
    assert obj["spec"]["template"]["spec"]["containers"][1]["image"] == "redis:7"  # the original is untouched
    assert [f.image for f in image_fields(replaced)] == [first.image, f"redis:7@{DIGEST}"]


def test_locations_read_like_kubernetes_field_paths():
    assert format_path(("spec", "template", "spec", "containers", 0, "image")) == (
        "spec.template.spec.containers[0].image"
    )
    assert ImageField(("spec", "initContainers", 2, "image"), "x").location == "spec.initContainers[2].image"


def test_image_volumes_are_images_too():
    """The kubelet pulls an image volume like a container image: the gate sees it, and can pin it."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {
            "containers": [{"name": "app", "image": "ghcr.io/acme/app@sha256:" + "a" * 64}],
            "volumes": [
                {"name": "data", "image": {"reference": "ghcr.io/acme/models:v1"}},
                {"name": "cache", "emptyDir": {}},
                {"name": "odd", "image": {"reference": 7}},
            ],
        },
    }
    fields = image_fields(pod)
    assert [(f.location, f.image) for f in fields] == [
        ("spec.containers[0].image", "ghcr.io/acme/app@sha256:" + "a" * 64),
        ("spec.volumes[0].image.reference", "ghcr.io/acme/models:v1"),
        ("spec.volumes[2].image.reference", None),
    ]
    pinned = replace_images(pod, {fields[1].path: "ghcr.io/acme/models:v1@sha256:" + "b" * 64})
    assert pinned["spec"]["volumes"][0]["image"]["reference"].endswith("b" * 64)
