"""Repository URLs: only https, ssh and scp-like; every git-injection shape is InvalidURL."""

from __future__ import annotations

import pytest

from gitward.api.conditions import Reason
from gitward.errors import Stalled
from gitward.source import urls


@pytest.mark.parametrize(
    ("url", "for_git", "identity"),
    [
        ("https://git.example.com/team-a/web.git", "https://git.example.com/team-a/web.git", None),
        ("HTTPS://Git.Example.COM:443/team-a/web.git", "https://git.example.com/team-a/web.git", None),
        ("https://git.example.com:8443/web.git", "https://git.example.com:8443/web.git", None),
        ("ssh://git@git.example.com/team-a/web.git", None, "ssh://git.example.com/team-a/web.git"),
        ("ssh://git@git.example.com:2222/web.git", None, "ssh://git.example.com:2222/web.git"),
        ("git@git.example.com:team-a/web.git", "ssh://git@git.example.com/team-a/web.git", None),
        ("https://[::1]:8443/web.git", "https://[::1]:8443/web.git", None),
    ],
)
def test_accepted_urls_are_normalized(url, for_git, identity):
    """Accepted URLs get one spelling for git and one identity for policy (no user, no default port)."""
    parsed = urls.parse(url)
    if for_git is not None:
        assert parsed.for_git == for_git
    if identity is not None:
        assert parsed.identity == identity
    assert "@" not in parsed.identity


@pytest.mark.parametrize(
    "url",
    [
        "ext::sh -c touch% /tmp/pwned",
        "ext::ssh -o ProxyCommand=x",
        "fd::17",
        "file:///srv/git/web.git",
        "/srv/git/web.git",
        "-u/tmp/x",
        "--upload-pack=touch /tmp/pwned",
        "http://git.example.com/web.git",
        "https://user:hunter2@git.example.com/web.git",
        "https://token@git.example.com/web.git",
        "ssh://git:hunter2@git.example.com/web.git",
        "ssh://-oProxyCommand=touch%20x/web.git",
        "git@-oProxyCommand=x:web.git",
        "-oProxyCommand=x@host:web.git",
        "ssh://git@git.example.com/-u.git",
        "https://git.example.com/team-a/../team-b/web.git",
        "https://git.example.com/team-a/%2e%2e/team-b/web.git",
        "https://git.example.com/web.git?upload-pack=x",
        "https://git.example.com/web.git\n--upload-pack=x",
        "https://git.example.com/web git",
        "https://git.example.com//web.git",
        "transport::https://git.example.com/web.git",
        "",
        "https://" + "a" * 3000,
    ],
)
def test_injection_shapes_are_invalid_before_git_runs(url):
    """Each shape git could read as a program, an option or a credential is refused as InvalidURL."""
    with pytest.raises(Stalled) as refused:
        urls.parse(url)
    assert refused.value.reason is Reason.INVALID_URL


def test_file_urls_only_with_the_test_switch():
    """file:// is refused unless the caller (test code) passes allow_file explicitly."""
    with pytest.raises(Stalled):
        urls.parse("file:///tmp/repo.git")
    assert urls.parse("file:///tmp/repo.git", allow_file=True).scheme is urls.Scheme.FILE


def test_refusals_never_echo_a_password():
    """A URL with a password in it is refused without repeating the password."""
    with pytest.raises(Stalled) as refused:
        urls.parse("https://deploy:hunter2-very-secret@git.example.com/web.git")
    assert "hunter2-very-secret" not in refused.value.message
