"""The pure image policy: repository globs, pinning, and every violation of every object listed at once."""

from __future__ import annotations

import pytest

from gitward.api.conditions import Reason
from gitward.api.resources import ImagePolicy, TagPolicy
from gitward.errors import Stalled
from gitward.images.policy import ImageViolations, check_policy, glob_problem, repository_allowed
from gitward.render.manifests import Manifest

DIGEST = "sha256:" + "ab" * 32


def deployment(name: str, *images: object, init: tuple[object, ...] = ()) -> Manifest:
    spec = {
        "containers": [{"name": f"c{i}", "image": image} for i, image in enumerate(images)],
        "initContainers": [{"name": f"i{i}", "image": image} for i, image in enumerate(init)],
    }
    obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"template": {"spec": spec}},
    }
    return Manifest(obj, f"deploy/{name}.yaml", 0)


def policy(*repositories: str, tags: TagPolicy = TagPolicy.FORBID) -> ImagePolicy:
    return ImagePolicy(repositories=repositories, tags=tags)


@pytest.mark.parametrize(
    ("name", "patterns", "allowed"),
    [
        ("ghcr.io/acme/web", ["ghcr.io/acme/*"], True),
        ("ghcr.io/acme/team/web", ["ghcr.io/acme/*"], False),  # * does not cross /
        ("ghcr.io/acme", ["ghcr.io/acme/*"], False),
        ("ghcr.io/acme-evil/web", ["ghcr.io/acme/*"], False),
        ("ghcr.io/acme-evil/web", ["ghcr.io/acme*/web"], True),  # * inside a segment is the admin's choice
        ("ghcr.io/acme/team/web", ["ghcr.io/acme/**"], True),
        ("ghcr.io/acme/web", ["ghcr.io/acme/**"], True),
        ("ghcr.io/acme", ["ghcr.io/acme/**"], False),  # ** is one or more further segments
        ("ghcr.io/acmex/web", ["ghcr.io/acme/**"], False),
        ("docker.io/library/nginx", ["docker.io/library/*"], True),
        ("docker.io/library/nginx", ["docker.io/library/nginx"], True),
        ("docker.io/acme/nginx", ["docker.io/library/*"], False),
        ("reg.example.com/team/app", ["*.example.com/team/*"], True),
        ("example.com/team/app", ["*.example.com/team/*"], False),
        ("reg.example.com:5000/team/app", ["*.example.com/team/*"], False),  # the port is part of the host
        ("evil.com/x.example.com/team/app", ["*.example.com/team/*"], False),
        ("ghcrxio/acme/web", ["ghcr.io/acme/web"], False),  # the dot is literal
        ("ghcr.io/acme/web1", ["ghcr.io/acme/web?"], True),
        ("ghcr.io/acme/web/1", ["ghcr.io/acme/web?1"], False),  # ? is not /
        ("GHCR.IO/acme/web", ["ghcr.io/acme/*"], False),  # case-sensitive: fail closed
        ("ghcr.io/acme/web", ["ghcr.io/acme/[w]eb"], False),  # no character classes: [ is literal
        ("ghcr.io/acme/[w]eb", ["ghcr.io/acme/[w]eb"], True),
        ("127.0.0.1:5000/team-a/web", ["127.0.0.1:5000/team-a/*"], True),
        ("127.0.0.1:5001/team-a/web", ["127.0.0.1:5000/team-a/*"], False),
        ("localhost/web", ["localhost/*"], True),
        ("ghcr.io/acme/web", [], False),
        ("ghcr.io/acme/web", ["quay.io/*/*", "ghcr.io/acme/web"], True),
    ],
)
def test_repository_globs(name, patterns, allowed):
    assert repository_allowed(name, patterns) is allowed


@pytest.mark.parametrize(
    ("pattern", "complaint"),
    [
        ("", "non-empty"),
        (" ghcr.io/acme/*", "without spaces"),
        ("ghcr.io/acme /*", "without spaces"),
        ("nginx", "registry/repository"),
        ("ghcr.io//web", "no empty segment"),
        ("ghcr.io/acme/", "no empty segment"),
        ("ghcr.io/**/web", "whole last segment"),
        ("ghcr.io/acme/web**", "whole last segment"),
        ("ghcr.io/acme/**x", "whole last segment"),
        ("**", "registry/repository"),
        ("*/acme/*", "registry host"),  # any host: the admin must name registries
        ("library/*", "registry host"),
        ("acme/web", "registry host"),
        ("index.docker.io/library/nginx", "not index.docker.io"),
        ("docker.io/nginx", "never matches"),
        ("docker.io/*", "never matches"),
    ],
)
def test_faulty_globs_are_explained_and_match_nothing(pattern, complaint):
    problem = glob_problem(pattern)
    assert problem is not None
    assert complaint in problem
    candidates = ["docker.io/library/nginx", "ghcr.io/acme/web", "ghcr.io/acme/x/web", "docker.io/acme/web"]
    assert not any(repository_allowed(name, [pattern]) for name in candidates)


@pytest.mark.parametrize(
    "pattern",
    [
        "ghcr.io/acme/*",
        "ghcr.io/**",
        "docker.io/library/*",
        "docker.io/**",
        "localhost/*",
        "host:5000/a",
        "*.example.com/x",
    ],
)
def test_sound_globs_have_no_problem(pattern):
    assert glob_problem(pattern) is None


def test_images_are_matched_by_their_normalised_name():
    uses = check_policy(
        [deployment("web", f"nginx@{DIGEST}", f"library/redis@{DIGEST}")], policy("docker.io/library/*")
    )
    assert [use.ref.name for use in uses] == ["docker.io/library/nginx", "docker.io/library/redis"]


def test_every_violation_of_every_object_is_listed_with_the_first_reason():
    manifests = [
        Manifest(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}}, "deploy/cfg.yaml", 0
        ),
        deployment(
            "web", "ghcr.io/acme/web:1", f"quay.io/evil/miner@{DIGEST}", init=("ghcr.io/acme/init:1",)
        ),
        deployment("api", 42, "Nginx", f"ghcr.io/acme/api@{DIGEST}"),
    ]
    with pytest.raises(ImageViolations) as caught:
        check_policy(manifests, policy("ghcr.io/acme/*"))
    error = caught.value
    assert isinstance(error, Stalled)
    assert [(v.reason, v.manifest.name, v.location) for v in error.violations] == [
        (Reason.IMAGE_NOT_PINNED, "web", "spec.template.spec.initContainers[0].image"),
        (Reason.IMAGE_NOT_PINNED, "web", "spec.template.spec.containers[0].image"),
        (Reason.IMAGE_NOT_ALLOWED, "web", "spec.template.spec.containers[1].image"),
        (Reason.IMAGE_NOT_ALLOWED, "api", "spec.template.spec.containers[0].image"),
        (Reason.IMAGE_NOT_ALLOWED, "api", "spec.template.spec.containers[1].image"),
    ]
    assert error.reason is Reason.IMAGE_NOT_PINNED
    assert error.message.startswith("5 image violation(s): Deployment/web (deploy/web.yaml#0): ")
    assert "quay.io/evil/miner (from 'quay.io/evil/miner@sha256:" in error.message
    assert "is not a string (int)" in error.message
    assert (
        "'Nginx' is not a valid image reference: repository name 'library/Nginx' must be lowercase"
        in error.message
    )


def test_tags_are_refused_unless_the_policy_resolves_them():
    manifests = [deployment("web", "ghcr.io/acme/web:1", "ghcr.io/acme/web", f"ghcr.io/acme/web:1@{DIGEST}")]
    with pytest.raises(ImageViolations) as caught:
        check_policy(manifests, policy("ghcr.io/acme/*"))
    assert [v.reason for v in caught.value.violations] == [Reason.IMAGE_NOT_PINNED] * 2
    assert "names a tag, not a digest" in caught.value.message
    uses = check_policy(manifests, policy("ghcr.io/acme/*", tags=TagPolicy.RESOLVE))
    assert [(u.ref.tag, u.ref.digest) for u in uses] == [("1", None), ("latest", None), ("1", DIGEST)]


def test_a_disallowed_image_is_not_allowed_whatever_the_tag_policy():
    for tags in TagPolicy:
        with pytest.raises(ImageViolations) as caught:
            check_policy(
                [deployment("web", "169.254.169.254/latest/meta-data:x")], policy("ghcr.io/acme/*", tags=tags)
            )
        assert caught.value.reason is Reason.IMAGE_NOT_ALLOWED


def test_a_missing_image_is_refused_not_skipped():
    obj = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "a"}]},
    }
    with pytest.raises(ImageViolations, match="is missing: gitward cannot verify"):
        check_policy([Manifest(obj, "pod.yaml", 0)], policy("ghcr.io/**"))


def test_objects_without_images_pass_and_uses_say_where_each_image_is():
    manifests = [
        Manifest({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}, "svc.yaml", 0),
        deployment("web", f"ghcr.io/acme/web@{DIGEST}"),
    ]
    [use] = check_policy(manifests, policy("ghcr.io/acme/*"))
    assert (use.manifest_index, use.manifest.name, use.field.location) == (
        1,
        "web",
        "spec.template.spec.containers[0].image",
    )
    assert use.ref.written == f"ghcr.io/acme/web@{DIGEST}"


def test_more_than_fifty_violations_are_counted_not_all_spelled_out():
    manifests = [deployment(f"w{i}", "quay.io/x/y:1") for i in range(60)]
    with pytest.raises(ImageViolations) as caught:
        check_policy(manifests, policy("ghcr.io/acme/*"))
    assert len(caught.value.violations) == 60
    assert caught.value.message.startswith("60 image violation(s): ")  # the count survives truncation
    assert len(caught.value.message) <= 1024  # bounded like every condition message
