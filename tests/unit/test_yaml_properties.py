"""render.yamlsafe under generated hostile input: JSON data out, or Stalled, and never any other exception."""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gitward.api.conditions import Reason
from gitward.errors import Stalled
from gitward.render.limits import Limits
from gitward.render.yamlsafe import load_documents

FILE = "deploy/fuzz.yaml"
# Small budgets, so generated input reaches the depth, alias and node refusals as well as the data checks.
SMALL = Limits(max_depth=12, max_aliases=6, max_nodes_per_document=400)
# Reproducible in CI and on a slow 2-core machine: a fixed sequence of examples, no database, no deadline.
FUZZ = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def assert_json_data(value: object, depth: int = 0) -> None:
    """Only the types JSON has, with str keys, int64 integers and finite floats."""
    assert depth <= SMALL.max_depth
    if isinstance(value, dict):
        for key, item in value.items():
            assert type(key) is str
            assert_json_data(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            assert_json_data(item, depth + 1)
    elif isinstance(value, bool) or value is None or isinstance(value, str):
        pass
    elif isinstance(value, int):
        assert -(2**63) <= value < 2**63
    else:
        assert type(value) is float
        assert math.isfinite(value)


def check(text: str, limits: Limits = SMALL) -> None:
    """The contract: JSON data for every document, or Stalled naming the file; nothing else escapes."""
    refusal = None
    try:
        for index, value in load_documents(text, file=FILE, limits=limits):
            assert isinstance(index, int)
            json.dumps(value, allow_nan=False)
            assert_json_data(value)
    except Stalled as error:
        refusal = error
    if refusal is not None:
        assert refusal.reason in {Reason.YAML_REJECTED, Reason.DUPLICATE_KEY}
        assert refusal.message.startswith(f"{FILE}#")


@FUZZ
@given(st.text())
def test_arbitrary_text_is_json_data_or_stalled(text):
    """Any string at all: the loader yields JSON data or raises Stalled, never another exception."""
    check(text)
    check(text, Limits())


# fmt: off
# Scalars that YAML 1.1, PyYAML and Kubernetes read differently, or that used to escape as exceptions.
SCALARS = [
    "x", "'quoted'", '"dq"', "''", "a b", "-x", "0", "-0", "+1", "007", "0o17", "010", "0b101", "0b_", "0x_",
    "0x1F", "1_000", "1e3", "1.0e+3", "9223372036854775807", "9223372036854775808", "-9223372036854775808",
    "-9223372036854775809", "18446744073709551615", "18446744073709551616", "0x7fffffffffffffff",
    "0x8000000000000000", "0b" + "1" * 63, "0b" + "1" * 64, "9" * 30, "9" * 5000, "1:30", "1" + ":59" * 12,
    "190:20:30.15", "0:0:0.5", ".nan", ".NaN", ".inf", "-.Inf", "+.INF", "1.0e+999", "-0.0", "1.5", ".5", "1.",
    "._", "3.14159265358979", "2024-01-01", "2001-12-14t21:59:43.10-05:00", "2001-12-14 21:59:43.10 -5",
    "0999-01-01", "~", "null", "Null", "NULL", "", "yes", "No", "ON", "off", "y", "n", "true", "False", "=",
    "<<", '"\\ud800"', '"\\udc00\\ud800"', '"\\ud83d\\ude00"', '"\\U0010FFFF"', '"\\x00"', '"\\0"',
    '"\\N\\_\\L\\P"', '"\\e"', "\u2028", "\x85",
]
# Tokens that break the syntax or the scanner itself; rarer, so most documents get as far as the data checks.
BROKEN = ["?", ":", "#c", "%", "@", "`", "\ufeff", '"\\q"', '"\\U00110000"', '"\\UFFFFFFFF"', "!<%FF> x", "!e!x y"]
TAGS = [
    "!!str ", "!!int ", "!!float ", "!!bool ", "!!null ", "!!timestamp ", "!!binary ", "!!set ", "!!omap ",
    "!!pairs ", "!!merge ", "!!value ", "!!map ", "!!seq ", "!!python/tuple ", "!!python/object/apply:os.system ",
    "!foo ", "! ", "!<tag:yaml.org,2002:str> ", "!<tag:example.com,2024:x> ",
]
NOISE = [
    "\t", "\r\n", "\r", "\ufeff", "---\n", "...\n", "--- ", "%YAML 1.1\n", "%TAG !e! tag:e.com,2000:\n", "#", "&",
    "*", "!", "|", ">", "'", '"', "{", "}", "[", "]", ",", ":", "? ", "- ", "\n", " ", "\x00",
]
# fmt: on


def rarely(values: list[str], otherwise: st.SearchStrategy[str], one_in: int) -> st.SearchStrategy[str]:
    """``otherwise`` most of the time, one of ``values`` about once in ``one_in`` draws."""
    return st.integers(1, one_in).flatmap(lambda n: st.sampled_from(values) if n == 1 else otherwise)


tags = rarely(TAGS, st.just(""), 4)
scalars = rarely(BROKEN, st.sampled_from(SCALARS), 25)


class Anchors:
    """Anchors in document order, so aliases mostly name one that exists and none is defined twice."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def anchor(self, draw: st.DrawFn) -> str:
        if draw(st.integers(1, 6)) > 1:
            return ""
        name = f"a{len(self.names)}"
        self.names.append(name)
        return f"&{name} "

    def alias(self, draw: st.DrawFn) -> str | None:
        if not self.names:  # now and then an alias to nothing
            return "*undefined" if draw(st.integers(1, 10)) == 1 else None
        return "*" + draw(st.sampled_from(self.names))


def leaf(draw: st.DrawFn, anchors: Anchors) -> str:
    """A scalar with an optional tag and anchor, or now and then an alias."""
    alias = anchors.alias(draw) if draw(st.integers(1, 8)) == 1 else None
    return alias or anchors.anchor(draw) + draw(tags) + draw(scalars)


def flow(draw: st.DrawFn, anchors: Anchors, level: int = 0) -> str:
    """A flow node: a leaf, a deep nest, or a flow sequence or mapping with keys of mixed types."""
    choice = draw(st.integers(0, 19)) if level < 4 else 0
    if choice <= 13:
        return leaf(draw, anchors)
    if choice == 14:
        depth = draw(st.integers(1, 40))
        opener, closer = draw(st.sampled_from([("[", "]"), ("{a: ", "}"), ("[{a: ", "}]"), ("[[", "]]")]))
        return opener * depth + "x" + closer * depth
    prefix = anchors.anchor(draw) + draw(tags)
    size = draw(st.integers(0, 3))
    if choice <= 16:
        return prefix + "[" + ", ".join(flow(draw, anchors, level + 1) for _ in range(size)) + "]"
    entries = []
    for _ in range(size):
        key = leaf(draw, anchors) if draw(st.integers(1, 5)) > 1 else flow(draw, anchors, level + 1)
        entries.append(f"{key}: {flow(draw, anchors, level + 1)}")
    return prefix + "{" + ", ".join(entries) + "}"


def block(draw: st.DrawFn, anchors: Anchors, indent: int = 0, level: int = 0) -> str:
    """A block mapping or sequence of flow nodes and nested blocks, with explicit (``?``) keys too."""
    pad = " " * indent
    sequence = draw(st.booleans())
    lines = []
    for _ in range(draw(st.integers(1, 3))):
        # The key is drawn first, as it is written first, so its anchors come before the value's aliases.
        if sequence:
            key = f"{pad}-"
        elif draw(st.integers(1, 6)) == 1:
            key = f"{pad}? {flow(draw, anchors)}\n{pad}:"
        else:
            key = f"{pad}{leaf(draw, anchors)}:"
        if level < 4 and draw(st.booleans()):
            lines.append(key + "\n" + block(draw, anchors, indent + 2, level + 1))
        else:
            lines.append(key + " " + flow(draw, anchors))
    return "\n".join(lines)


@st.composite
def yaml_streams(draw: st.DrawFn) -> str:
    """One to three block or flow documents, with markers, directives, BOM, CRLF and noise spliced in."""
    documents = []
    for _ in range(draw(st.integers(1, 3))):
        anchors = Anchors()  # anchors are per document
        documents.append(block(draw, anchors) if draw(st.booleans()) else flow(draw, anchors))
    text = draw(st.sampled_from(["", "\ufeff", "%YAML 1.1\n---\n", "---\n"])) + documents[0] + "\n"
    for document in documents[1:]:
        text += draw(st.sampled_from(["---\n", "...\n---\n", "---\r\n", "--- !!binary\n"])) + document + "\n"
    if draw(st.integers(1, 4)) == 1:
        text = text.replace("\n", "\r\n")
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3]))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(NOISE)) + text[at:]
    return text


@FUZZ
@given(yaml_streams())
def test_tricky_yaml_is_json_data_or_stalled(text):
    """Tags, anchors, aliases, mixed keys, deep nesting, int64 edges, BOM, CRLF, markers: data or Stalled."""
    check(text)
    check(text, Limits())
