"""Slow and incomplete requests on the real server (loopback): each is answered or closed within a bound.

One request must never hold the webhook port: a body promised and not sent, a body sent a byte at a
time, a request head that never ends, a connection that sends nothing. The server is the one the
operator runs (``make_runner`` and a TCP site), with short timeouts so that the bound is measurable.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from gitward.webhook import BODY_TIMEOUT, IDLE_TIMEOUT, Routes, make_app, make_runner, route_token

SECRET = b"s3cret"
REPO = "https://git.example.com/team/app.git"
TOKEN = route_token(SECRET, REPO)
ROUTE = f"/hook/{TOKEN}".encode()
BODY = b'{"ref": "refs/heads/main"}'
SIGNATURE = b"sha256=" + hmac.new(SECRET, BODY, hashlib.sha256).hexdigest().encode()
LATE = 0.3  # the body timeout and idle timeout the tests serve with
SLACK = 3.0  # what a loaded machine may add to a bound


def head(path: bytes = ROUTE, *headers: bytes) -> bytes:
    return b"POST " + path + b" HTTP/1.1\r\nHost: test\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"


@contextlib.asynccontextmanager
async def served(woken: list[tuple[str, str]]) -> AsyncIterator[int]:
    """The webhook as the operator serves it, on a free loopback port (yielded)."""
    routes = Routes()
    routes.register(("team-a", "web"), secret=SECRET, repository=REPO, branch="main")

    def wake(namespace: str, name: str) -> bool:
        woken.append((namespace, name))
        return True

    runner = make_runner(make_app(routes=routes, wake=wake, body_timeout=LATE), idle_timeout=LATE)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def exchange(
    port: int, sent: bytes, *, dribble: bytes = b"", every: float = 0.0
) -> tuple[bytes, float]:
    """Send ``sent``, then ``dribble`` a byte every ``every`` seconds; all the server sent until it closed, and when."""
    start = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(sent)
        await writer.drain()

        async def drip() -> None:
            with contextlib.suppress(ConnectionError):
                for byte in dribble:
                    await asyncio.sleep(every)
                    writer.write(bytes([byte]))
                    await writer.drain()

        dripping = asyncio.create_task(drip())
        received = b""
        with contextlib.suppress(ConnectionError):  # a reset is a close too
            received = await asyncio.wait_for(reader.read(), LATE + SLACK)  # to the end: the server closed
        dripping.cancel()
        return received, time.monotonic() - start
    finally:
        writer.close()


def exchanged(
    sent: bytes, *, dribble: bytes = b"", every: float = 0.0
) -> tuple[bytes, float, list[tuple[str, str]]]:
    """:func:`exchange` with a server of its own: what came back, when, and the apps it woke."""
    woken: list[tuple[str, str]] = []

    async def scenario() -> tuple[bytes, float]:
        async with served(woken) as port:
            return await exchange(port, sent, dribble=dribble, every=every)

    received, elapsed = asyncio.run(scenario())
    return received, elapsed, woken


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(
            head(ROUTE, b"Content-Length: 2047", b"X-Hub-Signature-256: " + SIGNATURE) + BODY, id="short-body"
        ),
        pytest.param(head(ROUTE, b"Content-Length: 1048576") + b"{", id="one-byte-of-a-mebibyte"),
        pytest.param(head(ROUTE, b"Transfer-Encoding: chunked") + b"3\r\nabc\r\n", id="chunked-never-ends"),
        pytest.param(head(ROUTE, b"Transfer-Encoding: chunked"), id="chunked-nothing"),
    ],
)
def test_a_body_that_never_comes_is_408_and_the_connection_closed(sent):
    """On a known route the body is awaited: not all there within the body timeout, 408 and closed at once."""
    received, elapsed, woken = exchanged(sent)
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert b"Connection: close" in received
    assert LATE * 0.8 <= elapsed < LATE + SLACK  # and read() returned: the server closed the connection
    assert woken == []


def test_a_body_sent_a_byte_at_a_time_is_bounded_as_a_whole():
    """The timeout is for the whole body, not between bytes: a client that trickles it cannot hold the port."""
    sent = head(ROUTE, b"Content-Length: %d" % len(BODY), b"X-Hub-Signature-256: " + SIGNATURE)
    received, elapsed, woken = exchanged(sent, dribble=BODY, every=LATE / 10)
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert elapsed < LATE + SLACK
    assert woken == []


def test_a_body_that_comes_in_time_is_read_whole():
    """A body in pieces, all there within the timeout, is read and authenticated like any other."""
    sent = head(
        ROUTE,
        b"Content-Length: %d" % len(BODY),
        b"X-Hub-Signature-256: " + SIGNATURE,
        b"Connection: close",
    )
    received, elapsed, woken = exchanged(sent + BODY[:-3], dribble=BODY[-3:], every=LATE / 10)
    assert received.startswith(b"HTTP/1.1 202 "), received
    assert elapsed < LATE + SLACK
    assert woken == [("team-a", "web")]


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(b"", id="nothing"),
        pytest.param(b"POST /hook/" + TOKEN.encode(), id="half-a-request-line"),
        pytest.param(head(ROUTE, b"Content-Length: 10")[:-2], id="a-head-without-its-end"),
    ],
)
def test_a_request_head_that_never_ends_is_closed_after_the_idle_timeout(sent):
    """No whole request head within the idle timeout: the connection is closed (there is nothing to answer)."""
    received, elapsed, woken = exchanged(sent)
    assert received == b""
    assert LATE * 0.8 <= elapsed < LATE + SLACK
    assert woken == []


def test_the_defaults_are_bounded():
    """What the operator serves with: seconds, not aiohttp's hour (its keep-alive default) or forever."""
    assert 0 < BODY_TIMEOUT <= 30
    assert 0 < IDLE_TIMEOUT <= 30
    app = make_app(routes=Routes(), wake=lambda *_: True)
    given = make_runner(app)._kwargs  # noqa: SLF001 - what aiohttp is given
    assert given["keepalive_timeout"] == IDLE_TIMEOUT
    with pytest.raises(ValueError, match="idle timeout"):
        make_runner(app, idle_timeout=0)
    with pytest.raises(ValueError, match="positive"):
        make_app(routes=Routes(), wake=lambda *_: True, body_timeout=0)
