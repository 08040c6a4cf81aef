"""Which repositories and branches an app may deploy from, under its tenant's policy.

Pure decisions over the parsed app and tenant: the app's namespace and
target namespace must be the tenant's; the repository must match one of the
tenant's ``sources[].url`` patterns; the branch must be a plain branch name
matching that entry's ``branches``. Globs: ``*`` and ``?`` stay within one
path segment, ``**`` crosses segments; nothing else is special. Patterns
are matched against the repository's identity (no user, no default port,
lower-case host), so ``HTTPS://Git.Example.com:443/x`` and
``https://git.example.com/x`` are the same repository.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from gitward.api.conditions import Reason
from gitward.api.resources import AppSpec, Namespace, SourceRule, TenantSpec
from gitward.errors import Stalled
from gitward.source import urls

MAX_BRANCH_LENGTH = 255
_FORBIDDEN_IN_BRANCH = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//")


@dataclass(frozen=True, slots=True)
class AllowedSource:
    """The outcome of the source policy: what may be fetched, and where it may go."""

    url: urls.RepoURL
    branch: str
    rule: SourceRule
    target_namespace: Namespace

    @property
    def ref(self) -> str:
        """The one ref ever resolved: the exact branch head, never a tag or an expression."""
        return f"refs/heads/{self.branch}"


@functools.lru_cache(maxsize=512)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    out = []
    index = 0
    while index < len(pattern):
        if pattern.startswith("**", index):
            out.append(".*")
            index += 2
        elif pattern[index] == "*":
            out.append("[^/]*")
            index += 1
        elif pattern[index] == "?":
            out.append("[^/]")
            index += 1
        else:
            out.append(re.escape(pattern[index]))
            index += 1
    return re.compile("".join(out), re.DOTALL)


def glob_match(pattern: str, value: str) -> bool:
    """Match ``value`` against a glob where ``*`` and ``?`` never cross a ``/``."""
    return _glob_regex(pattern).fullmatch(value) is not None


@functools.lru_cache(maxsize=512)
def _canonical_pattern(pattern: str) -> str:
    """Normalize the literal parts of a URL pattern the way :attr:`RepoURL.identity` is."""
    scheme, sep, rest = pattern.partition("://")
    if not sep:  # scp-like user@host:path is ssh://host/path
        user_host, _, path = pattern.partition(":")
        host = user_host.rpartition("@")[2]
        return f"ssh://{host.lower()}/{path.lstrip('/')}"
    authority, slash, path = rest.partition("/")
    host = authority.rpartition("@")[2].lower()
    default_port = {"https": ":443", "ssh": ":22"}.get(scheme.lower(), "")
    if default_port and host.endswith(default_port):
        host = host[: -len(default_port)]
    return f"{scheme.lower()}://{host}{slash}{path}"


def check_branch_name(branch: str) -> None:
    """Refuse anything that is not a plain branch name (git check-ref-format rules, and more)."""
    reasons = []
    if not branch or len(branch) > MAX_BRANCH_LENGTH:
        reasons.append("must be 1 to 255 characters")
    if branch in {"HEAD", "@"} or branch.startswith(("refs/", "-", "/", ".")):
        reasons.append("must be a branch name, not a ref or an option")
    if _FORBIDDEN_IN_BRANCH.search(branch):
        reasons.append("may not contain whitespace, '..', '@{', '//' or any of ~^:?*[\\")
    if branch.endswith(("/", ".", ".lock")) or "/." in branch:
        reasons.append("may not end with '/', '.' or '.lock', nor have a component starting with '.'")
    if reasons:
        raise Stalled(
            Reason.BRANCH_NOT_ALLOWED, f"{branch!r} is not a plain branch name: {'; '.join(reasons)}"
        )


def check_source(
    app: AppSpec,
    *,
    app_namespace: str,
    tenant_name: str,
    tenant: TenantSpec,
    allow_file: bool = False,
) -> AllowedSource:
    """Decide whether ``app`` may fetch its source under ``tenant``; raise ``Stalled`` if not.

    Checks run from the cheapest and most fundamental outwards: the
    namespaces, then the URL's shape, then the repository, then the branch.
    """
    owned = set(tenant.namespaces)
    if app_namespace not in owned:
        raise Stalled(
            Reason.NAMESPACE_VIOLATION,
            f"the app's namespace {app_namespace!r} is not one of tenant {tenant_name!r}'s namespaces",
        )
    target = app.target_namespace or Namespace(app_namespace)
    if target not in owned:
        raise Stalled(
            Reason.NAMESPACE_VIOLATION,
            f"targetNamespace {target!r} is not one of tenant {tenant_name!r}'s namespaces",
        )
    url = urls.parse(app.source.url, allow_file=allow_file)
    candidates = [rule for rule in tenant.sources if glob_match(_canonical_pattern(rule.url), url.identity)]
    if not candidates:
        raise Stalled(
            Reason.SOURCE_NOT_ALLOWED,
            f"repository {url.identity} does not match any source of tenant {tenant_name!r}",
        )
    check_branch_name(app.source.branch)
    for rule in candidates:
        if any(glob_match(pattern, app.source.branch) for pattern in rule.branches):
            return AllowedSource(url=url, branch=app.source.branch, rule=rule, target_namespace=target)
    allowed = sorted({pattern for rule in candidates for pattern in rule.branches})
    raise Stalled(
        Reason.BRANCH_NOT_ALLOWED,
        f"branch {app.source.branch!r} of {url.identity} is not allowed for tenant {tenant_name!r} "
        f"(allowed: {', '.join(allowed)})",
    )
