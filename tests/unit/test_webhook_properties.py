"""The webhook under arbitrary URL paths and headers: no 5xx, no lookup of an invalid name, no wake unsigned."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import re
from urllib.parse import quote

from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from gitward.webhook import make_app

SECRET = b"s3cret"
LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
NAMESPACE = re.compile(LABEL)
NAME = re.compile(rf"{LABEL}(\.{LABEL})*")
SETTINGS = settings(
    max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


def valid_route(namespace: str, name: str) -> bool:
    """The oracle, written from the Kubernetes definitions independently of the module under test."""
    return (
        len(namespace) <= 63
        and NAMESPACE.fullmatch(namespace) is not None
        and len(name) <= 253
        and NAME.fullmatch(name) is not None
    )


# Pieces of a path segment: plausible names, traversal and delimiter tricks in every encoding,
# arbitrary unicode (raw or percent-encoded) and runs long enough to pass every limit.
TRICKS = [
    "..", ".", "%2e%2e", "%2E%2E", ".%2e", "%2f", "%2F", "%5c", "\\", "?", "#", "%3F", "%23",
    "?watch=true", "%3Fwatch%3Dtrue", "%00", "%25", "%252F", "%", "%zz", ";", "@", ":", "~",
    "-", "_", "A", "é", "%C3%A9", "\u2024", "%E2%80%A4", "%ff", "%c0%ae", "&", "=",
]  # fmt: skip
CONTROLS = ["\t", "\x7f", "\x00", " ", "\r\n", "\n", "\r\nX-Hub-Signature-256: sha256=0\r\n"]


def path_strategy(*, controls: bool) -> st.SearchStrategy[str]:
    """Raw request paths; with ``controls``, also bytes no well-behaved client sends (raw sockets only)."""
    characters = st.characters() if controls else st.characters(exclude_categories=["Cc", "Cs"])
    pieces = st.one_of(
        st.from_regex(NAMESPACE, fullmatch=True),
        st.sampled_from(TRICKS + CONTROLS if controls else TRICKS),
        st.text(min_size=1, max_size=8).map(lambda text: quote(text, safe="")),
        st.text(characters, min_size=1, max_size=4),
        st.integers(min_value=60, max_value=300).map(lambda n: "a" * n),
    )
    segments = st.lists(pieces, min_size=1, max_size=5).map("".join)
    return st.one_of(
        st.builds(lambda ns, app: f"/hooks/{ns}/{app}", segments, segments),
        st.builds(lambda ns, app, rest: f"/hooks/{ns}/{app}/{rest}", segments, segments, segments),
        st.builds(lambda tail: f"/hooks/{tail}", segments),
        st.builds(lambda path: "/" + path, segments),
    )


HEADER_NAMES = st.sampled_from(
    [
        "X-Hub-Signature-256", "X-Signature-256", "X-Gitea-Signature", "X-Forgejo-Signature",
        "X-Gitlab-Token", "X-GitHub-Delivery", "X-Gitea-Delivery", "X-Gitlab-Event-UUID",
        "X-Delivery-Id", "Content-Type", "Content-Length", "Transfer-Encoding", "Host",
    ]
)  # fmt: skip
HEADER_VALUES = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80).map(str.encode),
    st.text(max_size=20).map(str.encode),
    st.binary(max_size=40),  # not text at all, or with CR/LF: framing and header-injection attempts
    st.just(b"sha256=" + b"0" * 64),
    st.integers(min_value=-1, max_value=2**70).map(lambda n: str(n).encode()),
)
BODIES = st.binary(max_size=256)


class Recorder:
    def __init__(self) -> None:
        self.looked_up: list[tuple[str, str]] = []
        self.woken: list[tuple[str, str]] = []

    async def secret_for(self, namespace: str, name: str) -> bytes | None:
        self.looked_up.append((namespace, name))
        return SECRET

    def wake(self, namespace: str, name: str) -> bool:
        self.woken.append((namespace, name))
        return True

    def app(self):
        return make_app(secret_for=self.secret_for, wake=self.wake, burst=1000)

    def only_valid_names_looked_up(self) -> bool:
        return all(valid_route(namespace, name) for namespace, name in self.looked_up)


def signature(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()


async def send_raw(recorder: Recorder, path: bytes, headers: list[tuple[str, bytes]], body: bytes) -> bytes:
    """Write one request byte for byte (no client checks or normalization); the status line of the answer."""
    server = TestServer(recorder.app())
    await server.start_server()
    try:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        request = b"POST " + path + b" HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
        request += b"".join(name.encode() + b": " + value + b"\r\n" for name, value in headers)
        if not any(name in {"Content-Length", "Transfer-Encoding"} for name, _ in headers):
            request += b"Content-Length: %d\r\n" % len(body)
        with contextlib.suppress(ConnectionError):  # the server may answer and close before reading all
            writer.write(request + b"\r\n" + body)
            await writer.drain()
        answer = b""
        with contextlib.suppress(ConnectionError):
            answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return answer.split(b"\r\n", 1)[0]
    finally:
        await server.close()


async def post_all(recorder: Recorder, requests: list[tuple[str, dict[str, str], bytes]]) -> list[int]:
    """POST each (raw path, headers, body) through the test client, the path exactly as written."""
    client = TestClient(TestServer(recorder.app()))
    await client.start_server()
    try:
        root = str(client.make_url("/")).rstrip("/")
        statuses = []
        for path, headers, body in requests:
            async with client.session.post(
                URL(root + path, encoded=True), data=body, headers=headers
            ) as response:
                statuses.append(response.status)
        return statuses
    finally:
        await client.close()


PATHS = path_strategy(controls=False)
RAW_PATHS = path_strategy(controls=True).map(lambda path: path.encode("utf-8", "surrogatepass"))


@SETTINGS
@given(
    path=RAW_PATHS,
    headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=4),
    body=BODIES,
)
def test_arbitrary_raw_requests(path, headers, body):
    """Any raw path bytes and headers: always an answer below 500, lookups only of valid names, no wake unsigned."""
    recorder = Recorder()
    status_line = asyncio.run(send_raw(recorder, path, headers, body))
    assert re.fullmatch(rb"HTTP/1\.[01] [1-4]\d\d .*", status_line), status_line
    assert recorder.only_valid_names_looked_up(), recorder.looked_up
    if recorder.woken:
        assert signature(body).encode() in b"".join(value for _, value in headers), (path, headers)


PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
EXTRA_HEADERS = st.dictionaries(
    HEADER_NAMES.filter(lambda name: name not in {"X-Hub-Signature-256", "Content-Length", "Host"}),
    PRINTABLE,
    max_size=3,
)
PLAIN_ROUTE = re.compile(r"/hooks/([^/?#%]+)/([^/?#%]+)")


@SETTINGS
@given(path=PATHS, extra=EXTRA_HEADERS, body=BODIES, forged=st.booleans())
def test_client_requests_wake_only_signed_valid_routes(path, extra, body, forged):
    """Through the test client: never 5xx; mis-signed wakes nothing; signed wakes the one valid route looked up."""
    extra.pop("Transfer-Encoding", None)  # the client frames the body itself
    headers = {**extra, "X-Hub-Signature-256": ("sha256=" + "0" * 64) if forged else signature(body)}
    recorder = Recorder()
    [status] = asyncio.run(post_all(recorder, [(path, headers, body)]))
    assert status < 500
    assert recorder.only_valid_names_looked_up(), recorder.looked_up
    if forged:
        assert recorder.woken == []
    if recorder.woken:
        assert status == 202
        assert recorder.woken == recorder.looked_up
    plain = PLAIN_ROUTE.fullmatch(path)
    if plain and valid_route(*plain.groups()) and not forged:
        assert (status, recorder.woken) == (202, [plain.groups()])


@SETTINGS
@given(
    namespace=st.from_regex(NAMESPACE, fullmatch=True).filter(lambda ns: len(ns) <= 63),
    name=st.from_regex(NAME, fullmatch=True).filter(lambda name: len(name) <= 253),
    body=BODIES,
)
def test_valid_routes_signed_are_woken(namespace, name, body):
    """Every valid namespace and name, correctly signed, is looked up as given and woken once (202)."""
    recorder = Recorder()
    [status] = asyncio.run(
        post_all(recorder, [(f"/hooks/{namespace}/{name}", {"X-Hub-Signature-256": signature(body)}, body)])
    )
    assert status == 202
    assert recorder.looked_up == [(namespace, name)]
    assert recorder.woken == [(namespace, name)]
