"""Generic object access for any kind: discovery, server-side apply, list, get, delete.

The apply layer and tenancy work with plain object bodies of any kind; this
module turns ``apiVersion``/``kind`` into REST paths through API discovery
(cached per client) and maps the API server's answers onto gitward's
errors, quoting the server's own message (truncated) so a user sees why.
Server-side apply is a ``PATCH`` with ``application/apply-patch+yaml``
(JSON is YAML), a field manager, and optionally ``dryRun=All``.
"""

from __future__ import annotations

import builtins
import json
import random
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from urllib3 import HTTPHeaderDict
from urllib3.exceptions import HTTPError
from urllib3.util import Retry

from gitward.api.conditions import Reason
from gitward.api.refs import ObjectRef
from gitward.errors import GitwardError, Stalled, Waiting, truncate
from gitward.kube.clients import IMPERSONATE_USER_HEADER
from gitward.kube.http import Connection, CredentialsUnavailable, Timeouts

_NOT_FOUND = 404
_TOO_MANY_REQUESTS = 429
_THROTTLED_ATTEMPTS = 6
_MAX_RETRY_AFTER = 5.0


def _retry_after(header: str | None, attempt: int) -> float:
    """Seconds to wait after a 429: the server's Retry-After (at most 5 s), else a backoff; jittered."""
    try:
        wanted = float(header) if header else 0.0
    except ValueError:
        wanted = 0.0
    base = min(_MAX_RETRY_AFTER, wanted or 0.1 * 2**attempt)
    return base * (0.5 + random.random())  # noqa: S311 - spreads retries apart, not cryptography


_FORBIDDEN = 403
_CONFLICT = 409
_TRANSIENT = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Resource:
    """Where a kind is served."""

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool

    def path(self, *, namespace: str | None, name: str | None = None) -> str:
        """The REST path of the collection (``name=None``) or of one object, every segment quoted.

        Raises :class:`InvalidPathSegment` for any value that could name another
        path (see :func:`path_segment`); an empty ``name`` is refused rather than
        read as the collection, so a nameless object can never become a
        collection-wide ``DELETE``.
        """
        base = _api_base(self.group, self.version)
        scope = f"/namespaces/{path_segment(namespace, 'namespace')}" if self.namespaced and namespace else ""
        tail = f"/{path_segment(name, 'name')}" if name is not None else ""
        return f"{base}{scope}/{path_segment(self.plural, 'resource')}{tail}"


class APIError(Exception):
    """An error answer from the API server, with its status and its own message (bounded).

    Wrapping the client's exception (as kopf does) keeps the client library
    inside this package: callers match on ``status`` and show ``message``.
    """

    def __init__(self, status: int, message: str, *, conflicts: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        # A server-side apply conflict: (field, the server's words on who owns it) per field, from
        # the Status object's causes with reason FieldManagerConflict.
        self.conflicts = conflicts

    @classmethod
    def from_response(cls, status: int, body: bytes, reason: str | None) -> APIError:
        """Build from a raw response, preferring the Status object's message."""
        conflicts: list[tuple[str, str]] = []
        try:
            answer = json.loads(body or b"{}")
            message = str(answer.get("message") or reason or status)
            conflicts.extend(
                (str(cause.get("field") or ""), str(cause.get("message") or ""))
                for cause in (answer.get("details") or {}).get("causes") or ()
                if isinstance(cause, dict) and cause.get("reason") == "FieldManagerConflict"
            )
        except (TypeError, ValueError, AttributeError):
            message = body.decode(errors="replace") or str(reason)
        return cls(status, truncate(message, 600), conflicts=tuple(conflicts[:20]))


class InvalidPathSegment(APIError, ValueError):  # noqa: N818 - named for what it refuses, like Stalled
    """A value refused as one segment of an API path: it could make the client request another path.

    Raised before any request is made. It is an :class:`APIError` with status
    400, so callers that already turn the server's refusals into conditions
    treat it like the server's own "bad request"; and a :class:`ValueError`.
    """

    def __init__(self, what: str, value: str) -> None:
        super().__init__(400, f"{what} {truncate(repr(value), 80)} is not a valid API path segment")
        self.what = what
        self.value = value


MAX_SEGMENT = 253  # the longest Kubernetes name (a DNS-1123 subdomain)


def path_segment(value: str, what: str) -> str:
    """``value`` quoted as exactly one path segment; :class:`InvalidPathSegment` if it cannot be one.

    Refused: empty, ``.`` or ``..``, containing ``/`` or ``%`` (no
    pre-encoded values: nothing is decoded twice), longer than 253, or not
    encodable as UTF-8. Everything else (``?``, ``#``, spaces, unicode) is
    percent-encoded, so the segment can never end the path or start a query.
    """
    if not value or value in {".", ".."} or "/" in value or "%" in value or len(value) > MAX_SEGMENT:
        raise InvalidPathSegment(what, value)
    try:
        return quote(value, safe="")
    except UnicodeEncodeError:  # lone surrogates
        raise InvalidPathSegment(what, value) from None


def _api_base(group: str, version: str) -> str:
    """``/api/<version>`` for the core group, ``/apis/<group>/<version>`` otherwise, quoted."""
    if not group:
        return f"/api/{path_segment(version, 'version')}"
    return f"/apis/{path_segment(group, 'group')}/{path_segment(version, 'version')}"


@dataclass(frozen=True, slots=True)
class Answer:
    """An answer from the API server, read whole."""

    status: int
    reason: str | None
    headers: HTTPHeaderDict
    data: bytes

    @property
    def ok(self) -> bool:
        """Whether the status is a success (2xx)."""
        return 200 <= self.status <= 299  # noqa: PLR2004 - the HTTP success range

    def error(self) -> APIError:
        """The error this answer is, quoting the server's own message."""
        return APIError.from_response(self.status, self.data, self.reason)

    def json_object(self) -> dict[str, Any]:
        """The object a success carries ({} if empty); :class:`APIError` for an error answer.

        An answer that is not a JSON object was cut short or garbled on the way: no answer
        (status 0), tried again like one.
        """
        if not self.ok:
            raise self.error()
        try:
            found = json.loads(self.data) if self.data else {}
        except ValueError:
            raise APIError(0, "the API server's answer was not JSON") from None
        if not isinstance(found, dict):
            raise APIError(0, "the API server's answer was not a JSON object")
        return found


def fetch(
    api: Connection,
    method: str,
    path: str,
    *,
    query: Sequence[tuple[str, str]] = (),
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: Timeouts = 60,
    retries: Retry | None = None,
) -> Answer:
    """One request and its whole answer; :class:`APIError` with status 0 when there is none.

    That includes a request never made for want of credentials (or of TLS set up with
    them): the API server is unavailable to this client either way.
    """
    try:
        response = api.request(
            method, path, query=query, body=body, headers=headers, timeout=timeout, retries=retries
        )
    except CredentialsUnavailable as error:
        raise no_credentials(error) from None
    except (OSError, HTTPError) as error:  # no answer: urllib3's MaxRetryError, ProtocolError
        raise APIError(0, f"cannot reach the API server: {type(error).__name__}") from None
    try:
        data = response.read()
    except (OSError, HTTPError) as error:
        response.close()  # cut off mid-answer: the connection cannot be reused
        raise APIError(0, f"the API server's answer broke off: {type(error).__name__}") from None
    finally:
        response.release_conn()
    return Answer(response.status, response.reason, response.headers, data)


def no_credentials(error: CredentialsUnavailable) -> APIError:
    """No request made: the credentials could not be obtained (the message says why, quoting no secret)."""
    return APIError(0, truncate(f"credentials could not be obtained: {error}", 600))


def json_body(body: object) -> bytes | None:
    """A request body as bytes: text as it is (apply sends YAML's JSON), anything else as JSON."""
    if body is None or isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body).encode()


def stream_events(
    api: Connection,
    path: str,
    *,
    query: Sequence[tuple[str, str]],
    headers: Mapping[str, str] | None = None,
    timeout: Timeouts,
) -> Iterator[dict[str, Any]]:
    """The events of a watch (``watch=true`` in ``query``) as they come, one JSON line each.

    Raises :class:`APIError`: for an answer that is not a stream (410: the version is too
    old), for an ``ERROR`` event, and with status 0 when the stream breaks off. The
    connection is closed at the end, never returned mid-stream to the pool.
    """
    try:
        raw = api.request(
            "GET",
            path,
            query=query,
            headers={"Accept": "application/json", **(headers or {})},
            timeout=timeout,
        )
    except CredentialsUnavailable as error:
        raise no_credentials(error) from None
    except (OSError, HTTPError) as error:
        raise APIError(0, f"cannot reach the API server: {type(error).__name__}") from None
    try:
        if not 200 <= raw.status <= 299:  # noqa: PLR2004 - the HTTP success range
            raise APIError.from_response(raw.status, raw.read(), raw.reason)
        pending = b""
        # Held here, not only by the loop: that urllib3 closes the connection when this iterator
        # happens to be finalized mid-chunk is not what keeps a live stream out of the pool; the
        # close() below is.
        chunks = raw.stream(64 * 1024)
        for chunk in chunks:
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    yield _watch_event(line)
    except (OSError, HTTPError) as error:
        raise APIError(0, f"the watch broke off: {type(error).__name__}") from None
    finally:
        raw.close()  # a watch left mid-stream cannot go back to the pool as a clean connection
        raw.release_conn()


def _watch_event(line: bytes) -> dict[str, Any]:
    """One event of a watch; :class:`APIError` for an ``ERROR`` event or a line that is not an event."""
    try:
        event = json.loads(line)
    except ValueError:
        raise APIError(0, "the watch sent a line that is not JSON") from None
    if not isinstance(event, dict):
        raise APIError(0, "the watch sent a line that is not an event")
    if event.get("type") == "ERROR":
        status = event.get("object") or {}
        if not isinstance(status, dict):
            raise APIError(0, "the watch sent an ERROR event without a Status")
        try:
            code = int(status.get("code") or 0)
        except (TypeError, ValueError):
            code = 0
        raise APIError(code, truncate(str(status.get("message") or ""), 600))
    return event


class Objects:
    """Object access through one API client (the operator's, or one impersonating a tenant)."""

    def __init__(self, api: Connection, *, impersonate: str = "") -> None:
        self.api = api
        # Impersonation is a header on each request, so every tenant shares the operator's one
        # client and its keep-alive connections (a client per tenant meant a TLS handshake each).
        self.impersonate = impersonate
        self._resources: dict[tuple[str, str], dict[str, Resource]] = {}
        self._lock = threading.Lock()

    def impersonating(self, username: str) -> Objects:
        """The same client and discovery cache, every request authorized as ``username``."""
        other = Objects(self.api, impersonate=username)
        other._resources = self._resources
        other._lock = self._lock
        return other

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: object = None,
        content_type: str = "application/json",
        text: bool = False,
    ) -> Any:  # noqa: ANN401 - raw JSON from the API server
        """One request through the client's auth, TLS and connection pool; raises :class:`APIError`.

        With ``text``, the answer is returned as text (a log), not parsed as JSON.
        """
        headers = {
            "Content-Type": content_type,
            "Accept": "*/*" if text else "application/json",
            **({IMPERSONATE_USER_HEADER: self.impersonate} if self.impersonate else {}),
        }
        for attempt in range(_THROTTLED_ATTEMPTS):
            response = fetch(
                self.api, method, path, query=query or [], body=json_body(body), headers=headers, timeout=60
            )
            data = response.data
            if response.status == _TOO_MANY_REQUESTS and attempt < _THROTTLED_ATTEMPTS - 1:
                # The API server sheds load with 429 and says when to come back; as client-go does,
                # that is waited out here (bounded, jittered) rather than failing the reconcile.
                time.sleep(_retry_after(response.headers.get("Retry-After"), attempt))
                continue
            if text and response.ok:
                return data.decode("utf-8", errors="replace")
            return response.json_object()
        raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover

    def resource(self, api_version: str, kind: str) -> Resource:
        """Discover where ``kind`` of ``api_version`` is served (cached)."""
        group, _, version = api_version.rpartition("/")
        key = (group, version)
        with self._lock:
            known = self._resources.get(key)
        if known is None:
            path = _api_base(group, version)
            try:
                listing = self._call("GET", path)
            except APIError as error:
                if error.status == _NOT_FOUND:
                    raise Stalled(
                        Reason.DRY_RUN_FAILED, f"the API server does not serve {api_version}"
                    ) from None
                raise _transient_or(error, Reason.DRY_RUN_FAILED, f"discovering {api_version}") from None
            known = {
                item["kind"]: Resource(
                    group, version, item["kind"], item["name"], bool(item.get("namespaced"))
                )
                for item in listing.get("resources", [])
                if "/" not in item["name"]
            }
            with self._lock:
                self._resources[key] = known
        if kind not in known:
            raise Stalled(Reason.DRY_RUN_FAILED, f"the API server does not serve {kind} in {api_version}")
        return known[kind]

    def preferred_resource(self, group: str, kind: str) -> Resource | None:
        """Where ``kind`` of ``group`` is served at the group's preferred version (None if it is not)."""
        if not group:
            return self.resource("v1", kind)
        path = f"/apis/{path_segment(group, 'group')}"
        try:
            listing = self._call("GET", path)
        except APIError as error:
            if error.status == _NOT_FOUND:
                return None
            raise
        version = str((listing.get("preferredVersion") or {}).get("version", ""))
        try:
            return self.resource(f"{group}/{version}", kind)
        except Stalled:
            return None

    def apply(
        self, obj: Mapping[str, Any], *, field_manager: str, dry_run: bool = False, force: bool = True
    ) -> dict[str, Any]:
        """Server-side apply ``obj``; return what the server stored (or would store)."""
        ref = ObjectRef.of(obj)
        resource = self.resource(ref.api_version, ref.kind)
        query = [("fieldManager", field_manager), ("force", "true" if force else "false")]
        if dry_run:
            query.append(("dryRun", "All"))
        result: dict[str, Any] = self._call(
            "PATCH",
            resource.path(namespace=ref.namespace, name=ref.name),
            query=query,
            body=json.dumps(obj),
            content_type="application/apply-patch+yaml",
        )
        return result

    def get(self, ref: ObjectRef) -> dict[str, Any] | None:
        """The object, or None if it does not exist."""
        resource = self.resource(ref.api_version, ref.kind)
        try:
            found: dict[str, Any] = self._call("GET", resource.path(namespace=ref.namespace, name=ref.name))
        except APIError as error:
            if error.status == _NOT_FOUND:
                return None
            raise
        return found

    def list(
        self, api_version: str, kind: str, namespace: str | None, *, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        """Every object of a kind in a namespace (or the cluster, with ``namespace=None``)."""
        return self.list_at(api_version, kind, namespace, label_selector=label_selector)[0]

    def list_at(
        self, api_version: str, kind: str, namespace: str | None, *, label_selector: str | None = None
    ) -> tuple[builtins.list[dict[str, Any]], str]:
        """Every object of a kind in a namespace, and the list's resourceVersion to watch from."""
        resource = self.resource(api_version, kind)
        query = [("labelSelector", label_selector)] if label_selector else []
        listing = self._call("GET", resource.path(namespace=namespace), query=query)
        items: builtins.list[dict[str, Any]] = listing.get("items", [])
        for item in items:  # list items carry no apiVersion/kind of their own
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items, str((listing.get("metadata") or {}).get("resourceVersion") or "")

    def watch(
        self, api_version: str, kind: str, namespace: str | None, *, resource_version: str, seconds: int
    ) -> Iterator[dict[str, Any]]:
        """The events after ``resource_version`` for up to ``seconds``; ends when the server ends it.

        Raises :class:`APIError` for an answer that is not a stream (410: the version is too old).
        """
        resource = self.resource(api_version, kind)
        query = [
            ("watch", "true"),
            ("resourceVersion", resource_version),
            ("timeoutSeconds", str(seconds)),
            ("allowWatchBookmarks", "true"),
        ]
        yield from stream_events(
            self.api,
            resource.path(namespace=namespace),
            query=query,
            headers={IMPERSONATE_USER_HEADER: self.impersonate} if self.impersonate else None,
            timeout=(10, seconds + 30),
        )

    def create(self, body: Mapping[str, Any], *, dry_run: bool = False) -> dict[str, Any] | None:
        """Create an object; None if one of that name already exists."""
        ref = ObjectRef.of(body)
        resource = self.resource(ref.api_version, ref.kind)
        try:
            created: dict[str, Any] = self._call(
                "POST",
                resource.path(namespace=ref.namespace),
                query=[("dryRun", "All")] if dry_run else None,
                body=dict(body),
            )
        except APIError as error:
            if error.status == _CONFLICT:
                return None
            raise
        return created

    def log_tail(self, namespace: str, pod: str, container: str, *, lines: int, max_bytes: int) -> str:
        """The last ``lines`` lines of a container's log, at most ``max_bytes`` (the server cuts it)."""
        resource = self.resource("v1", "Pod")
        query = [
            ("container", container),
            ("tailLines", str(lines)),
            ("limitBytes", str(max_bytes)),
        ]
        path = resource.path(namespace=namespace, name=pod) + "/log"
        tail: str = self._call("GET", path, query=query, text=True)
        return tail[:max_bytes]

    def merge_patch(
        self, ref: ObjectRef, patch: Mapping[str, Any], *, subresource: str = ""
    ) -> dict[str, Any]:
        """JSON merge patch of an object or of a subresource (``status``)."""
        resource = self.resource(ref.api_version, ref.kind)
        path = resource.path(namespace=ref.namespace, name=ref.name) + (
            f"/{path_segment(subresource, 'subresource')}" if subresource else ""
        )
        patched: dict[str, Any] = self._call(
            "PATCH", path, body=dict(patch), content_type="application/merge-patch+json"
        )
        return patched

    def delete(self, ref: ObjectRef, *, dry_run: bool = False) -> bool:
        """Delete the object (background propagation); False if it was already gone."""
        resource = self.resource(ref.api_version, ref.kind)
        # With a body, the API server takes DeleteOptions from the body alone and ignores the
        # query string: dryRun must be in the body, or a "dry run" really deletes.
        options: dict[str, Any] = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "propagationPolicy": "Background",
        }
        if dry_run:
            options["dryRun"] = ["All"]
        try:
            self._call("DELETE", resource.path(namespace=ref.namespace, name=ref.name), body=options)
        except APIError as error:
            if error.status == _NOT_FOUND:
                return False
            raise
        return True


def _transient_or(error: APIError, reason: Reason, what: str) -> GitwardError:
    """No answer, 429 or 5xx: the API server's trouble, retried (``APIUnavailable``); else ``reason``."""
    if error.status in _TRANSIENT or error.status == 0:
        return Waiting(Reason.API_UNAVAILABLE, f"{what}: {error.message}", retry_after=15)
    return Stalled(reason, f"{what}: {error.message}")


def classify(error: APIError, *, ref: ObjectRef, dry_run: bool) -> GitwardError:
    """Map an API error on one object onto the reason a user can act on."""
    message = f"{ref}: {error.message}"
    if error.status == _FORBIDDEN:
        return Stalled(Reason.APPLY_FORBIDDEN, message)
    if error.status == _CONFLICT and error.conflicts:
        owners = "; ".join(f"{field} ({who})" for field, who in error.conflicts)
        return Stalled(
            Reason.FIELD_CONFLICT,
            f"{ref}: fields owned by another field manager: {owners}; "
            "set spec.force to take them over, or leave them to that manager",
        )
    if error.status == _CONFLICT:
        return Stalled(Reason.OWNERSHIP_CONFLICT, message)
    del dry_run  # the same reason either way: the server refused the object as written
    return _transient_or(error, Reason.DRY_RUN_FAILED, message)
