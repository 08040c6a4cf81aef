"""Source policy: namespaces, repositories and branches a tenant allows."""

from __future__ import annotations

from typing import Any

import pytest

from gitward.api.conditions import Reason
from gitward.api.resources import parse_app_spec, parse_tenant_spec
from gitward.errors import Stalled
from gitward.source.allow import check_branch_name, check_source, glob_match

TENANT = parse_tenant_spec(
    {
        "namespaces": ["team-a", "team-a-staging"],
        "sources": [
            {"url": "https://git.example.com/team-a/*", "branches": ["main", "release/*"]},
            {"url": "git@git.example.com:team-a/infra.git", "branches": ["prod"]},
            {"url": "https://git.example.com/shared/**", "branches": ["stable"]},
        ],
        "trust": {"keysFrom": [{"configMapRef": {"name": "keys"}}]},
    }
)


def app(url: str, branch: str = "main", **spec: Any):
    return parse_app_spec({"tenant": "team-a", "source": {"url": url, "branch": branch}, **spec})


def check(application, namespace: str = "team-a"):
    return check_source(application, app_namespace=namespace, tenant_name="team-a", tenant=TENANT)


def refused(application, namespace: str = "team-a") -> Stalled:
    with pytest.raises(Stalled) as error:
        check(application, namespace)
    return error.value


def test_an_allowed_repository_and_branch_pass():
    """A listed repository on a listed branch is allowed, resolving exactly refs/heads/<branch>."""
    allowed = check(app("https://git.example.com/team-a/web.git", "release/1.2"))
    assert allowed.ref == "refs/heads/release/1.2"
    assert allowed.target_namespace == "team-a"


def test_spellings_of_the_same_repository_match():
    """Case, a default port and scp-like vs ssh:// do not change which repository it is."""
    assert check(app("HTTPS://GIT.example.com:443/team-a/web.git"))
    assert check(app("ssh://git@git.example.com/team-a/infra.git", "prod"))
    assert check(app("git@git.example.com:team-a/infra.git", "prod"))


@pytest.mark.parametrize(
    "url",
    [
        "https://git.example.com/team-b/web.git",
        "https://git.example.com/team-a/nested/web.git",
        "https://git.example.com.evil.net/team-a/web.git",
        "https://evil.net/git.example.com/team-a/web.git",
        "ssh://git@git.example.com/team-a/web.git",
    ],
)
def test_unlisted_repositories_are_not_allowed(url):
    """Another team's repository, a deeper path, a look-alike host or another scheme: SourceNotAllowed."""
    assert refused(app(url)).reason is Reason.SOURCE_NOT_ALLOWED


def test_double_star_crosses_path_segments():
    """`**` is the only glob that matches across `/`."""
    assert check(app("https://git.example.com/shared/a/b/c.git", "stable"))


@pytest.mark.parametrize("branch", ["develop", "release", "release/1/2", "feature/main"])
def test_unlisted_branches_are_not_allowed(branch):
    """A branch outside the matching source's list is BranchNotAllowed, naming what is allowed."""
    error = refused(app("https://git.example.com/team-a/web.git", branch))
    assert error.reason is Reason.BRANCH_NOT_ALLOWED
    assert "main, release/*" in error.message


@pytest.mark.parametrize(
    "branch",
    [
        "main~1",
        "main^",
        "refs/tags/main",
        "refs/heads/main",
        "HEAD",
        "@",
        "-main",
        "main..x",
        "ma:in",
        "main.lock",
    ],
)
def test_ref_expressions_are_never_branches(branch):
    """Expressions, refs and option-like names are refused even if a glob would match them."""
    with pytest.raises(Stalled) as error:
        check_branch_name(branch)
    assert error.value.reason is Reason.BRANCH_NOT_ALLOWED


def test_the_app_must_live_in_a_tenant_namespace():
    """An app created in a namespace its tenant does not own is refused."""
    assert (
        refused(app("https://git.example.com/team-a/web.git"), "team-b").reason is Reason.NAMESPACE_VIOLATION
    )


def test_the_target_namespace_must_be_the_tenants():
    """targetNamespace outside the tenant's namespaces is refused; inside it is used."""
    outside = app("https://git.example.com/team-a/web.git", targetNamespace="kube-system")
    assert refused(outside).reason is Reason.NAMESPACE_VIOLATION
    inside = app("https://git.example.com/team-a/web.git", targetNamespace="team-a-staging")
    assert check(inside).target_namespace == "team-a-staging"


def test_invalid_urls_are_refused_before_matching():
    """A malformed URL is InvalidURL even when a pattern would match it."""
    assert refused(app("ext::sh -c x")).reason is Reason.INVALID_URL


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("release/*", "release/1", True),
        ("release/*", "release/1/2", False),
        ("release/**", "release/1/2", True),
        ("v?", "v1", True),
        ("v?", "v/", False),
        ("main", "main", True),
        ("main", "mainx", False),
        ("a.b", "axb", False),
        ("[ab]", "a", False),
    ],
)
def test_glob_semantics(pattern, value, expected):
    """`*` and `?` stay in a segment, `**` crosses them, everything else is literal."""
    assert glob_match(pattern, value) is expected
