"""Parsing and vetting repository URLs before any git process sees them.

git treats a URL as a program to run in more ways than one (``ext::``, a
leading dash read as an option, ``--upload-pack=``, an ssh host that ssh
reads as ``-oProxyCommand``). So only three shapes are accepted, parsed
here into a normalized :class:`RepoURL`: ``https://host/path``,
``ssh://[user@]host[:port]/path`` and scp-like ``user@host:path``.
Credentials never belong in a URL (they come from the app's Secret), and
a path may not climb with ``..``. Everything else is ``InvalidURL``, before
any process starts. Pure: no I/O.
"""

from __future__ import annotations

import enum
import re
import urllib.parse
from dataclasses import dataclass

from gitward.api.conditions import Reason
from gitward.errors import Stalled

MAX_URL_LENGTH = 2048
_SHOWN_CHARS = 200
_CONTROL = frozenset(range(0x20)) | {0x7F}

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*$")
_IPV6 = re.compile(r"^\[[0-9A-Fa-f:.]+\]$")
_USER = re.compile(r"^[A-Za-z0-9._~-]+$")
_SCP_LIKE = re.compile(r"^(?P<user>[^@/:]+)@(?P<host>[^:/]+):(?P<path>.+)$")
_PATH_CHARS = re.compile(r"^[A-Za-z0-9._~/%+@=,-]+$")


class Scheme(enum.StrEnum):
    """The transports gitward will use."""

    HTTPS = "https"
    SSH = "ssh"
    FILE = "file"  # tests only: see FetchOptions.allow_file_transport


@dataclass(frozen=True, slots=True)
class RepoURL:
    """A vetted repository URL, normalized for policy matching and for git."""

    scheme: Scheme
    host: str
    path: str
    user: str | None = None
    port: int | None = None

    def _authority(self, *, with_user: bool) -> str:
        user = f"{self.user}@" if self.user and with_user else ""
        default_port = 443 if self.scheme is Scheme.HTTPS else 22
        port = f":{self.port}" if self.port and self.port != default_port else ""
        return f"{user}{self.host}{port}"

    @property
    def for_git(self) -> str:
        """The URL handed to git: one spelling, scp-like rewritten as ssh://."""
        if self.scheme is Scheme.FILE:
            return f"file://{self.path}"
        return f"{self.scheme}://{self._authority(with_user=True)}{self.path}"

    @property
    def identity(self) -> str:
        """The repository's identity for policy matching and messages: no user, no default port."""
        if self.scheme is Scheme.FILE:
            return f"file://{self.path}"
        return f"{self.scheme}://{self._authority(with_user=False)}{self.path}"


def _invalid(url: str, why: str) -> Stalled:
    shown = url if len(url) <= _SHOWN_CHARS else url[:_SHOWN_CHARS] + "..."
    # The URL itself may hold a password someone pasted in: never echo the userinfo part.
    shown = re.sub(r"//[^/@]*@", "//***@", shown)
    return Stalled(Reason.INVALID_URL, f"{why}: {shown!r}")


def _check_path(url: str, path: str) -> str:
    if not path.startswith("/"):
        path = "/" + path
    if not _PATH_CHARS.match(path):
        raise _invalid(url, "the repository path has characters git URLs do not need")
    segments = urllib.parse.unquote(path).split("/")
    if any(segment in {"..", "."} for segment in segments):
        raise _invalid(url, "the repository path may not contain '.' or '..' segments")
    if any(segment.startswith("-") for segment in segments):
        raise _invalid(url, "a path segment may not start with '-'")
    if "//" in path:
        raise _invalid(url, "the repository path may not contain empty segments")
    return path


def _check_host(url: str, host: str) -> str:
    if not host or host.startswith("-") or not (_HOST.match(host) or _IPV6.match(host)):
        raise _invalid(url, "not a valid host name")
    return host.lower()


def parse(url: str, *, allow_file: bool = False) -> RepoURL:
    """Vet ``url`` and return it parsed, or raise ``Stalled(InvalidURL)``.

    ``allow_file`` admits ``file://`` URLs for tests; nothing that comes
    from a resource may set it.
    """
    if not url or len(url) > MAX_URL_LENGTH:
        raise _invalid(url, "a repository URL must be 1 to 2048 characters")
    if url != url.strip() or any(ch.isspace() or ord(ch) in _CONTROL for ch in url):
        raise _invalid(url, "a repository URL may not contain whitespace or control characters")
    if url.startswith("-"):
        raise _invalid(url, "a repository URL may not start with '-' (git would read it as an option)")
    if "::" in url.split("/", 1)[0] or url.lower().startswith(("ext::", "fd::")):
        raise _invalid(url, "remote helper transports (ext::, fd::, ...) run programs and are refused")
    lowered = url.lower()
    if lowered.startswith("https://"):
        return _parse_hierarchical(url, Scheme.HTTPS)
    if lowered.startswith("ssh://"):
        return _parse_hierarchical(url, Scheme.SSH)
    if lowered.startswith("file://"):
        if not allow_file:
            raise _invalid(url, "file:// URLs are not allowed; use https://, ssh:// or user@host:path")
        path = url[len("file://") :]
        return RepoURL(Scheme.FILE, host="", path=_check_path(url, path))
    if "://" in url:
        raise _invalid(url, "only https://, ssh:// and user@host:path URLs are allowed")
    match = _SCP_LIKE.match(url)
    if match is None:
        raise _invalid(url, "only https://, ssh:// and user@host:path URLs are allowed")
    user = match["user"]
    if not _USER.match(user) or user.startswith("-"):
        raise _invalid(url, "not a valid ssh user name")
    host = _check_host(url, match["host"])
    return RepoURL(Scheme.SSH, host=host, path=_check_path(url, match["path"]), user=user)


def _parse_hierarchical(url: str, scheme: Scheme) -> RepoURL:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise _invalid(url, "not a valid URL") from None
    if parts.query or parts.fragment:
        raise _invalid(url, "a repository URL may not have a query or fragment")
    if parts.password is not None:
        raise _invalid(url, "credentials may not be embedded in the URL; use the app's secretRef")
    user = parts.username
    if user is not None:
        if scheme is Scheme.HTTPS:
            raise _invalid(url, "credentials may not be embedded in the URL; use the app's secretRef")
        if not _USER.match(user) or user.startswith("-"):
            raise _invalid(url, "not a valid ssh user name")
    hostname = parts.hostname or ""
    host = _check_host(url, f"[{hostname}]" if ":" in hostname else hostname)
    if port is not None and not 0 < port < 65536:  # noqa: PLR2004 - the TCP port range
        raise _invalid(url, "not a valid port")
    return RepoURL(scheme, host=host, path=_check_path(url, parts.path), user=user, port=port)
