"""The registry client's pure parts: whose credentials go to which registry, challenges, deadlines.

The client's network behaviour is tested against the real registry and a hostile server in
tests/integration/test_registry_client.py.
"""

from __future__ import annotations

import base64
import json

import pytest

from gitward.images.budget import Deadline
from gitward.images.registry import (
    InvalidRegistrySettingsError,
    RegistryClient,
    RegistryCredentials,
    RegistryLogin,
    api_host,
    elsewhere_problem,
    parse_challenge,
)

SECRET = "s3cret-Passw0rd"


def config(auths) -> str:
    return json.dumps({"auths": auths})


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def test_logins_are_read_from_auth_or_username_and_password():
    credentials = RegistryCredentials.from_dockerconfigjson(
        config(
            {
                "ghcr.io": {"auth": basic("robot", "pa:ss:word")},  # the password may hold colons
                "quay.io": {"username": "bot", "password": SECRET},
                "registry.example.com": {"identitytoken": "unsupported"},
                "broken.example.com": {"auth": "%%% not base64"},
                "nocolon.example.com": {"auth": base64.b64encode(b"just-a-user").decode()},
            }
        )
    )
    assert credentials.login_for("ghcr.io", "acme/web") == RegistryLogin("robot", "pa:ss:word")
    assert credentials.login_for("quay.io", "x/y") == RegistryLogin("bot", SECRET)
    for host in ("registry.example.com", "broken.example.com", "nocolon.example.com"):
        assert credentials.login_for(host, "x/y") is None
    assert credentials.registries == ("ghcr.io", "quay.io")


@pytest.mark.parametrize(
    "key",
    [
        "https://index.docker.io/v1/",
        "index.docker.io",
        "docker.io",
        "registry-1.docker.io",
        "https://registry-1.docker.io/v2/",
    ],
)
def test_every_spelling_of_docker_hub_is_docker_hub(key):
    credentials = RegistryCredentials.from_dockerconfigjson(config({key: {"auth": basic("u", SECRET)}}))
    assert credentials.login_for("docker.io", "library/nginx") == RegistryLogin("u", SECRET)
    assert api_host("docker.io") == "registry-1.docker.io"
    assert api_host("ghcr.io") == "ghcr.io"


def test_a_login_applies_only_to_its_own_host_and_port():
    credentials = RegistryCredentials.from_dockerconfigjson(
        config({"https://Registry.Example.com:5000": {"auth": basic("u", SECRET)}})
    )
    assert credentials.login_for("registry.example.com:5000", "a/b") is not None
    assert credentials.login_for("registry.example.com", "a/b") is None
    assert credentials.login_for("registry.example.com:5001", "a/b") is None
    assert credentials.login_for("evil.example.com:5000", "a/b") is None


def test_a_login_with_a_path_applies_to_repositories_under_it_and_the_longest_wins():
    credentials = RegistryCredentials.from_dockerconfigjson(
        config(
            {
                "ghcr.io": {"auth": basic("anyone", "p0")},
                "ghcr.io/acme": {"auth": basic("acme", "p1")},
                "ghcr.io/acme/team": {"auth": basic("team", "p2")},
            }
        )
    )
    assert credentials.login_for("ghcr.io", "acme/team/web").username == "team"
    assert credentials.login_for("ghcr.io", "acme/web").username == "acme"
    assert credentials.login_for("ghcr.io", "acme").username == "acme"
    assert (
        credentials.login_for("ghcr.io", "acme-evil/web").username == "anyone"
    )  # a prefix is a path, not a string


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        ('{"auths": {"ghcr.io": {"password": "' + SECRET + '"', "not JSON"),  # cut short
        ('["' + SECRET + '"]', "no 'auths'"),
        ('{"auths": ["' + SECRET + '"]}', "no 'auths'"),
    ],
)
def test_an_unusable_secret_is_refused_without_quoting_it(data, complaint):
    with pytest.raises(InvalidRegistrySettingsError, match=complaint) as caught:
        RegistryCredentials.from_dockerconfigjson(data)
    assert SECRET not in str(caught.value)
    assert caught.value.__context__ is None  # not even the parse error, which holds the text


def test_no_password_shows_in_a_repr():
    credentials = RegistryCredentials.from_dockerconfigjson(
        config({"ghcr.io": {"auth": basic("robot", SECRET)}})
    )
    client = RegistryClient(credentials=credentials)
    for text in (repr(credentials), repr(credentials.entries[0]), repr(client), str(client)):
        assert SECRET not in text
        assert basic("robot", SECRET) not in text
    assert "robot" in repr(credentials)
    assert RegistryLogin("robot", SECRET).basic_authorization() == "Basic " + basic("robot", SECRET)


@pytest.mark.parametrize(
    ("header", "scheme", "params"),
    [
        (
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull"',
            "bearer",
            {
                "realm": "https://auth.docker.io/token",
                "service": "registry.docker.io",
                "scope": "repository:library/nginx:pull",
            },
        ),
        ('Basic realm="gitward-test"', "basic", {"realm": "gitward-test"}),
        (
            'bearer realm="https://x/t", error="insufficient_scope"',
            "bearer",
            {"realm": "https://x/t", "error": "insufficient_scope"},
        ),
        ('Bearer realm="a\\"b",Service=plain', "bearer", {"realm": 'a"b', "service": "plain"}),
        ("", "", {}),
        ("Negotiate", "negotiate", {}),
    ],
)
def test_authentication_challenges(header, scheme, params):
    assert parse_challenge(header) == (scheme, params)


def test_a_deadline_runs_on_its_clock_and_bounds_each_timeout():
    now = [100.0]
    deadline = Deadline(10.0, lambda: now[0])
    assert deadline.remaining() == 10.0
    assert deadline.bound(15.0) == 10.0
    assert deadline.bound(3.0) == 3.0
    now[0] = 109.5
    assert deadline.bound(3.0) == 0.5
    now[0] = 111.0
    assert deadline.expired
    assert deadline.remaining() == 0.0
    assert deadline.bound(3.0) == 0.001  # a socket call with no time left fails at once


@pytest.mark.parametrize(
    ("registry", "url", "refused"),
    [
        ("registry.example.com", "https://registry.example.com/token", False),
        ("index.docker.io", "https://auth.docker.io/token", False),  # Docker Hub: another public host
        ("ghcr.io", "https://pkg-containers.githubusercontent.com/blob", False),
        ("127.0.0.1:5000", "https://127.0.0.1:7000/token", False),  # a loopback registry's own host
        ("ghcr.io", "https://169.254.169.254/latest/meta-data", True),  # a cloud's metadata address
        ("ghcr.io", "https://127.0.0.1/token", True),
        ("ghcr.io", "https://10.0.0.7/blob", True),
        ("ghcr.io", "https://[::1]/token", True),
        ("ghcr.io", "https://kubernetes.default.svc/api", True),
        ("ghcr.io", "https://vault.internal/token", True),
        ("ghcr.io", "https://localhost/token", True),
        ("ghcr.io", "https://intranet/token", True),
        ("registry.corp.example:5000", "https://10.1.2.3/blob", True),
    ],
)
def test_a_registry_may_not_send_gitward_to_an_internal_host_other_than_its_own(registry, url, refused):
    assert (elsewhere_problem(registry, url) is not None) is refused
