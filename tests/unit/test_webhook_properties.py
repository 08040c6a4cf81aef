"""The webhook under arbitrary paths, headers and bodies: only documented answers, never a 5xx, no wake unsigned."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import re
from urllib.parse import parse_qs, quote, unquote

from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from yarl import URL

from gitward.webhook import Routes, make_app, route_token

SECRET = b"s3cret"
REPO = "https://git.example.com/team/app.git"
TOKEN = route_token(SECRET, REPO)
UNKNOWN = route_token(SECRET, "https://git.example.com/team/other.git")
APPS = {("team-a", "web"): "main", ("team-a", "api"): "main", ("team-b", "stage"): "staging"}
# What the endpoint may answer to a POST (the module documents each), and what the HTTP parser
# answers to bytes that are not HTTP at all (raw sockets only).
DOCUMENTED = {200, 202, 401, 404, 408, 413, 429}
MALFORMED_HTTP = {400}
# A raw request may promise a body it never sends (a Content-Length larger than the body, a chunked
# body that never ends). HTTP owes no answer to that, but the webhook gives one: 408 once the body
# is BODY_TIMEOUT late. The tests use a short one, and wait for every answer at most ANSWER_WITHIN.
BODY_TIMEOUT = 0.5
ANSWER_WITHIN = 5.0
TOKEN_SHAPE = re.compile(r"[0-9a-f]{64}")
SETTINGS = settings(
    max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)

# Pieces of a path segment: the real token, near misses, traversal and delimiter tricks in every
# encoding, arbitrary unicode (raw or percent-encoded) and runs long enough to pass every limit.
TRICKS = [
    "..", ".", "%2e%2e", "%2E%2E", ".%2e", "%2f", "%2F", "%5c", "\\", "?", "#", "%3F", "%23",
    "?watch=true", "%3Fwatch%3Dtrue", "%00", "%25", "%252F", "%", "%zz", ";", "@", ":", "~",
    "-", "_", "A", "é", "%C3%A9", "\u2024", "%E2%80%A4", "%ff", "%c0%ae", "&", "=", "/",
]  # fmt: skip
CONTROLS = ["\t", "\x7f", "\x00", " ", "\r\n", "\n", "\r\nX-Hub-Signature-256: sha256=0\r\n"]
TOKENS = [TOKEN, UNKNOWN, TOKEN.upper(), TOKEN[:-1], TOKEN + "0", TOKEN[:-1] + "g"]


def path_strategy(*, controls: bool) -> st.SearchStrategy[str]:
    """Raw request paths; with ``controls``, also bytes no well-behaved client sends (raw sockets only)."""
    characters = st.characters() if controls else st.characters(exclude_categories=["Cc", "Cs"])
    pieces = st.one_of(
        st.sampled_from(TOKENS),
        st.from_regex(TOKEN_SHAPE, fullmatch=True),
        st.sampled_from(TRICKS + CONTROLS if controls else TRICKS),
        st.text(min_size=1, max_size=8).map(lambda text: quote(text, safe="")),
        st.text(characters, min_size=1, max_size=4),
        st.integers(min_value=60, max_value=300).map(lambda n: "a" * n),
    )
    segments = st.lists(pieces, min_size=1, max_size=4).map("".join)
    return st.one_of(
        st.sampled_from(TOKENS).map(lambda token: f"/hook/{token}"),
        st.builds(lambda segment: f"/hook/{segment}", segments),
        st.builds(lambda segment, rest: f"/hook/{segment}/{rest}", segments, segments),
        st.builds(lambda namespace, app: f"/hooks/{namespace}/{app}", segments, segments),
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
    st.just(b"application/x-www-form-urlencoded"),
    st.integers(min_value=-1, max_value=2**70).map(lambda n: str(n).encode()),
)
REFS = st.one_of(
    st.sampled_from(["refs/heads/main", "refs/heads/staging", "refs/heads/other", "refs/tags/v1", "main"]),
    st.text(max_size=30),
    st.integers(),
    st.none(),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)
BODIES = st.one_of(
    st.binary(max_size=256),
    st.builds(
        lambda ref, extra: json.dumps({**extra, "ref": ref}).encode(),
        REFS,
        st.dictionaries(st.text(max_size=5), JSON_VALUES, max_size=3),
    ),
    JSON_VALUES.map(lambda value: json.dumps(value).encode()),
    st.builds(lambda ref: b"payload=" + quote(json.dumps({"ref": ref})).encode(), REFS),
)


def expected_woken(body: bytes, content_type: str) -> set[tuple[str, str]]:
    """The oracle, written from the documented rule independently of the module under test."""
    ref = None
    with contextlib.suppress(ValueError, RecursionError):
        text = body.decode()
        if content_type == "application/x-www-form-urlencoded":
            fields = parse_qs(text, strict_parsing=True, max_num_fields=64)
            [text] = fields.get("payload", [""])
        document = json.loads(text)
        if isinstance(document, dict) and isinstance(document.get("ref"), str):
            ref = document["ref"]
    if ref is not None and re.fullmatch(r"refs/heads/.+", ref, re.DOTALL):
        return {app for app, branch in APPS.items() if f"refs/heads/{branch}" == ref}
    if ref is not None and ref.startswith("refs/tags/"):
        return set()
    return set(APPS)


class Recorder:
    def __init__(self) -> None:
        self.woken: list[tuple[str, str]] = []
        self.routes = Routes()
        for app, branch in APPS.items():
            self.routes.register(app, secret=SECRET, repository=REPO, branch=branch)

    def wake(self, namespace: str, name: str) -> bool:
        self.woken.append((namespace, name))
        return True

    def app(self):
        return make_app(routes=self.routes, wake=self.wake, burst=1000, body_timeout=BODY_TIMEOUT)


def signature(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()


async def send_raw(recorder: Recorder, path: bytes, headers: list[tuple[str, bytes]], body: bytes) -> bytes:
    """Write one request byte for byte (no client checks or normalization); the status line of the answer.

    Only the status line is awaited, never the end of the connection: after answering a request whose
    body it did not read (404, 413, ...), aiohttp drains the rest for up to its lingering time (10 s)
    before it closes, and a body that was promised but not sent never ends. That the connection is
    then closed in bounded time is tested on its own (test_webhook_slow_clients.py).
    """
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
        with contextlib.suppress(ConnectionError):  # TimeoutError is a failure: the server owes an answer
            answer = await asyncio.wait_for(reader.readline(), ANSWER_WITHIN)
        writer.close()
        return answer.removesuffix(b"\r\n")
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


ROUTE = f"/hook/{TOKEN}".encode()
FORM = b"application/x-www-form-urlencoded"


@SETTINGS
@given(
    path=RAW_PATHS,
    headers=st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=4),
    body=BODIES,
)
# A body promised and not sent. Which examples hypothesis draws depends on every constant in the
# gitward modules the test session has imported (hypothesis mixes them in), so this test alone and
# the whole unit tier see different examples: these ones are always tried. On the route the body is
# awaited (408 once it is late); elsewhere the answer comes before it, and aiohttp lingers after.
@example(path=ROUTE, headers=[("Content-Length", b"2047"), ("X-Hub-Signature-256", b"81576")], body=b'{"": [')
@example(path=ROUTE, headers=[("Transfer-Encoding", b"chunked")], body=b"3\r\nabc\r\n")
@example(path=ROUTE, headers=[("Content-Length", b"5719729"), ("Content-Type", FORM)], body=b"[]")
@example(path=b"/hook/qq", headers=[("Content-Length", b"5719729"), ("Content-Type", FORM)], body=b"[]")
def test_arbitrary_raw_requests(path, headers, body):
    """Any raw path bytes and headers: a documented answer (never a 5xx), no wake unsigned or off the route.

    An answer to every request, even one whose body never comes: 408, within a bound.
    """
    recorder = Recorder()
    status_line = asyncio.run(send_raw(recorder, path, headers, body))
    match = re.fullmatch(rb"HTTP/1\.[01] (\d{3}) .*", status_line)
    assert match, status_line
    assert int(match[1]) in DOCUMENTED | MALFORMED_HTTP, status_line
    if recorder.woken:
        assert int(match[1]) == 202
        assert TOKEN.encode() in path, path
        assert signature(body).encode() in b"".join(value for _, value in headers), (path, headers)


PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
EXTRA_HEADERS = st.dictionaries(
    HEADER_NAMES.filter(lambda name: name not in {"X-Hub-Signature-256", "Content-Length", "Host"}),
    PRINTABLE,
    max_size=3,
)


@SETTINGS
@given(path=PATHS, extra=EXTRA_HEADERS, body=BODIES, forged=st.booleans())
def test_client_requests_wake_only_signed_deliveries_on_the_route(path, extra, body, forged):
    """Through the test client: only documented answers; mis-signed wakes nothing; not a token is 404."""
    extra.pop("Transfer-Encoding", None)  # the client frames the body itself
    headers = {**extra, "X-Hub-Signature-256": ("sha256=" + "0" * 64) if forged else signature(body)}
    recorder = Recorder()
    [status] = asyncio.run(post_all(recorder, [(path, headers, body)]))
    assert status in DOCUMENTED | MALFORMED_HTTP
    if status in MALFORMED_HTTP:  # only a path no URL may hold: the HTTP parser refused it
        assert not all(0x21 <= ord(character) < 0x7F for character in path), path
    if forged:
        assert recorder.woken == []
    if recorder.woken:
        assert status == 202
    segment = path.removeprefix("/hook/") if path.startswith("/hook/") else None
    shapes = {segment, unquote(segment)} if segment is not None else set()
    if segment is not None and status not in MALFORMED_HTTP and not any(map(TOKEN_SHAPE.fullmatch, shapes)):
        assert status == 404  # not a token: nothing else looked at
    if segment is not None and segment != TOKEN and TOKEN_SHAPE.fullmatch(segment):
        assert (status, recorder.woken) == (404, [])


@SETTINGS
@given(body=BODIES, content_type=st.sampled_from(["application/json", "application/x-www-form-urlencoded"]))
def test_signed_deliveries_wake_exactly_the_apps_of_the_pushed_branch(body, content_type):
    """Every signed body on the route is 202 and wakes each app the documented rule names, once."""
    recorder = Recorder()
    headers = {"X-Hub-Signature-256": signature(body), "Content-Type": content_type}
    [status] = asyncio.run(post_all(recorder, [(f"/hook/{TOKEN}", headers, body)]))
    assert status == 202
    assert sorted(recorder.woken) == sorted(expected_woken(body, content_type))
