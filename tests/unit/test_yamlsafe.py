"""render.yamlsafe: YAML from a repository becomes JSON data as Kubernetes reads it, or a named refusal."""

from __future__ import annotations

import json

import pytest

from gitward.api.conditions import Reason
from gitward.errors import Stalled
from gitward.render.limits import Limits
from gitward.render.yamlsafe import load_documents

FILE = "deploy/app.yaml"
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


def load(text: str, **limits: int) -> list[tuple[int, object]]:
    return list(load_documents(text, file=FILE, limits=Limits(**limits)))


def refused(text: str, **limits: int) -> Stalled:
    with pytest.raises(Stalled) as caught:
        load(text, **limits)
    return caught.value


def assert_names(error: Stalled, index: int, path: str, *needles: str) -> None:
    prefix = f"{FILE}#{index}: {path}: " if path else f"{FILE}#{index}: "
    assert error.message.startswith(prefix), error.message
    for needle in needles:
        assert needle in error.message, error.message


# (text, the documents it yields)
ACCEPTED = {
    "date timestamp stays the string": ("when: 2024-01-01\n", [(0, {"when": "2024-01-01"})]),
    "lowercase-t timestamp stays the string": (
        "when: 2001-12-14t21:59:43.10-05:00\n",
        [(0, {"when": "2001-12-14t21:59:43.10-05:00"})],
    ),
    "spaced timestamp stays the string": (
        "when: 2001-12-14 21:59:43.10 -5\n",
        [(0, {"when": "2001-12-14 21:59:43.10 -5"})],
    ),
    "explicit !!timestamp stays the string": (
        "when: !!timestamp 2001-12-14\n",
        [(0, {"when": "2001-12-14"})],
    ),
    "timestamp in a list": ("- 2024-01-01\n- x\n", [(0, ["2024-01-01", "x"])]),
    "int key becomes its text": ("1: a\n", [(0, {"1": "a"})]),
    "negative and hex int keys become decimal text": ("-7: a\n0x1F: b\n", [(0, {"-7": "a", "31": "b"})]),
    "bool keys become true and false": ("true: x\nFalse: y\n", [(0, {"true": "x", "false": "y"})]),
    "YAML 1.1 yes/no keys are bools, as in go-yaml": ("yes: a\nno: b\n", [(0, {"true": "a", "false": "b"})]),
    "timestamp key stays the string": ("2024-01-01: a\n", [(0, {"2024-01-01": "a"})]),
    "quoted keys stay as written": ("'1': a\n\"true\": b\n", [(0, {"1": "a", "true": "b"})]),
    "int64 bounds are accepted": (
        f"max: {INT64_MAX}\nmin: {INT64_MIN}\nhex: 0x7fffffffffffffff\n",
        [(0, {"max": INT64_MAX, "min": INT64_MIN, "hex": INT64_MAX})],
    ),
    "YAML 1.1 numbers keep their values": (
        "a: 1_000\nb: 010\nc: 0b101\ne: 1.5\nf: 6.02e+23\ng: -0.5\n",
        [(0, {"a": 1000, "b": 8, "c": 5, "e": 1.5, "f": 6.02e23, "g": -0.5})],
    ),
    "explicit JSON tags that fit their text": (
        "a: !!str 123\nb: !!int '42'\nc: !!float 1\nd: !!bool yes\ne: !!null ''\nf: !!map {k: v}\ng: !!seq [1]\n",
        [(0, {"a": "123", "b": 42, "c": 1.0, "d": True, "e": None, "f": {"k": "v"}, "g": [1]})],
    ),
    "the non-specific tag ! resolves as usual": ("a: ! {k: v}\n", [(0, {"a": {"k": "v"}})]),
    "= and << written as values are strings": ("a: =\nb: <<\n", [(0, {"a": "=", "b": "<<"})]),
    "a quoted << key is an ordinary key": ("'<<': a\n", [(0, {"<<": "a"})]),
    "an escaped surrogate pair is one character": ('a: "\\ud83d\\ude00"\n', [(0, {"a": "\U0001f600"})]),
    "BOM and CRLF line ends": ("\ufeffa: 1\r\nb: [x, y]\r\n", [(0, {"a": 1, "b": ["x", "y"]})]),
    "empty and null documents are skipped but counted": (
        "---\n---\nnull\n---\na: 1\n...\n",
        [(2, {"a": 1})],
    ),
    "aliases are expanded": (
        "base: &b {k: v}\nuse: *b\nlist: [*b, *b]\n",
        [(0, {"base": {"k": "v"}, "use": {"k": "v"}, "list": [{"k": "v"}, {"k": "v"}]})],
    ),
}

# Float keys as sigs.k8s.io/yaml writes them: strconv.FormatFloat(key, 'g', -1, 32).
FLOAT_KEYS = {
    "1.5": "1.5",
    "0.1": "0.1",
    "100.0": "100",
    "999999.0": "999999",
    "1000000.0": "1e+06",
    "1234567.0": "1.234567e+06",
    "3.14159265358979": "3.1415927",
    "0.0001": "0.0001",
    "0.00001": "1e-05",
    "-1.5": "-1.5",
    "-0.0": "-0",
    "1.0e+39": ".inf",
    ".inf": ".inf",
    "-.inf": "-.inf",
    ".NaN": ".nan",
}

# (text, reason, document index, path of the offending value, words the message must contain)
REFUSED = {
    "!!binary": (
        "data:\n  blob: !!binary aGVsbG8=\n",
        Reason.YAML_REJECTED,
        0,
        "data.blob",
        ["!!binary"],
    ),
    "!!set": ("spec:\n  s: !!set {a, b}\n", Reason.YAML_REJECTED, 0, "spec.s", ["!!set"]),
    "!!omap": ("spec:\n  o: !!omap [a: 1]\n", Reason.YAML_REJECTED, 0, "spec.o", ["!!omap"]),
    "!!pairs": ("spec:\n  p: !!pairs [a: 1]\n", Reason.YAML_REJECTED, 0, "spec.p", ["!!pairs"]),
    "!!python/object/apply": (
        "x: !!python/object/apply:os.system ['touch /tmp/pwned']\n",
        Reason.YAML_REJECTED,
        0,
        "x",
        ["!!python/object/apply:os.system"],
    ),
    "!!python/tuple": ("x: [1, !!python/tuple [1]]\n", Reason.YAML_REJECTED, 0, "x[1]", ["!!python/tuple"]),
    "local tag on a scalar": ("secret: !vault abc\n", Reason.YAML_REJECTED, 0, "secret", ["!vault"]),
    "local tag on a mapping": ("spec: !Ref {a: 1}\n", Reason.YAML_REJECTED, 0, "spec", ["!Ref"]),
    "verbatim unknown tag": (
        "x: !<tag:example.com,2024:thing> v\n",
        Reason.YAML_REJECTED,
        0,
        "x",
        ["tag:example.com,2024:thing"],
    ),
    "!!str on a sequence": ("x: !!str [a]\n", Reason.YAML_REJECTED, 0, "x", ["!!str", "sequence"]),
    "!!binary on a key": (
        "data:\n  ? !!binary aGk=\n  : x\n",
        Reason.YAML_REJECTED,
        0,
        "data",
        ["key at line 2", "!!binary"],
    ),
    "!!int that is not an int": ("a:\n  b: !!int abc\n", Reason.YAML_REJECTED, 0, "a.b", ["!!int"]),
    "!!bool that is not a bool": ("a: !!bool maybe\n", Reason.YAML_REJECTED, 0, "a", ["!!bool"]),
    "!!null that is not null": ("a: !!null x\n", Reason.YAML_REJECTED, 0, "a", ["!!null"]),
    "!!timestamp that is not a timestamp": (
        "a: !!timestamp soon\n",
        Reason.YAML_REJECTED,
        0,
        "a",
        ["!!timestamp"],
    ),
    "explicit !!merge": ("a: !!merge <<\n", Reason.YAML_REJECTED, 0, "a", ["!!merge"]),
    "explicit !!value": ("a: !!value =\n", Reason.YAML_REJECTED, 0, "a", ["!!value"]),
    "int just above int64": (
        "spec:\n  containers:\n  - image: 9223372036854775808\n",
        Reason.YAML_REJECTED,
        0,
        "spec.containers[0].image",
        ["9223372036854775808", "64-bit"],
    ),
    "int just below int64": (f"a: {INT64_MIN - 1}\n", Reason.YAML_REJECTED, 0, "a", ["64-bit"]),
    "hex int above int64": ("a: 0x8000000000000000\n", Reason.YAML_REJECTED, 0, "a", ["64-bit"]),
    "five thousand digits": ("a: " + "9" * 5000 + "\n", Reason.YAML_REJECTED, 0, "a", ["64-bit"]),
    "base 60 above int64": ("a: 1" + ":59" * 20 + "\n", Reason.YAML_REJECTED, 0, "a", ["64-bit"]),
    "huge int key": (
        "m:\n  99999999999999999999: x\n",
        Reason.YAML_REJECTED,
        0,
        "m",
        ["key at line 2", "64-bit"],
    ),
    "int with no digits": ("a: 0x_\n", Reason.YAML_REJECTED, 0, "a", ["not a valid integer"]),
    ".nan": ("data:\n  when: .nan\n", Reason.YAML_REJECTED, 0, "data.when", [".nan", "JSON number"]),
    ".inf": ("a: [.inf]\n", Reason.YAML_REJECTED, 0, "a[0]", [".inf"]),
    "-.inf": ("a: -.Inf\n", Reason.YAML_REJECTED, 0, "a", ["-.Inf"]),
    "float literal that overflows": ("a: 1.0e+999\n", Reason.YAML_REJECTED, 0, "a", ["out of range"]),
    "null key": ("data:\n  null: a\n", Reason.YAML_REJECTED, 0, "data", ["null", "line 2"]),
    "~ key": ("~: a\n", Reason.YAML_REJECTED, 0, "", ["null"]),
    "empty key": ("a:\n  ? \n  : v\n", Reason.YAML_REJECTED, 0, "a", ["null"]),
    "sequence key": ("data:\n  [a]: b\n", Reason.YAML_REJECTED, 0, "data", ["must be scalars", "line 2"]),
    "mapping key": ("? {a: 1}\n: b\n", Reason.YAML_REJECTED, 0, "", ["must be scalars"]),
    "int key colliding with a string key": (
        'data:\n  1: a\n  "1": b\n',
        Reason.DUPLICATE_KEY,
        0,
        'data["1"]',
        ["duplicate key '1'", "line 3"],
    ),
    "bool key colliding with a string key": (
        "true: a\n'true': b\n",
        Reason.DUPLICATE_KEY,
        0,
        "true",
        ["duplicate key 'true'", "line 2"],
    ),
    "float key colliding with an int key": ("1.0: a\n1: b\n", Reason.DUPLICATE_KEY, 0, '["1"]', ["line 2"]),
    "plain duplicate": (
        "metadata:\n  name: a\n  name: b\n",
        Reason.DUPLICATE_KEY,
        0,
        "metadata.name",
        ["duplicate key 'name'", "line 3"],
    ),
    "duplicate in a list item": ("- {x: 1, x: 2}\n", Reason.DUPLICATE_KEY, 0, "[0].x", ["duplicate key 'x'"]),
    "merge key": (
        "base: &b {a: 1}\nderived:\n  <<: *b\n",
        Reason.YAML_REJECTED,
        0,
        "derived",
        ["merge keys (<<)"],
    ),
    "escaped unpaired surrogate": ('a:\n  b: "\\ud800"\n', Reason.YAML_REJECTED, 0, "a.b", ["surrogate"]),
    "recursive alias": ("a: &x [1, *x]\n", Reason.YAML_REJECTED, 0, "", ["*x"]),
    "escape past U+10FFFF": ('a: "\\U00110000"\n', Reason.YAML_REJECTED, 0, "", ["not valid YAML"]),
    "escape past the C int range": ('a: "\\UFFFFFFFF"\n', Reason.YAML_REJECTED, 0, "", ["not valid YAML"]),
    "YAML version of thousands of digits": (
        "%YAML 1." + "9" * 5000 + "\n--- a\n",
        Reason.YAML_REJECTED,
        0,
        "",
        ["not valid YAML"],
    ),
    "bad syntax": ("apiVersion: v1\nkind: [ConfigMap\n", Reason.YAML_REJECTED, 0, "", ["not valid YAML"]),
    "tab indentation": ("a:\n\t- 1\n", Reason.YAML_REJECTED, 0, "", ["not valid YAML at line 2"]),
    "later document names its index": (
        "a: 1\n---\nb: 2\n---\nc:\n  d: !!binary aGk=\n",
        Reason.YAML_REJECTED,
        2,
        "c.d",
        ["!!binary"],
    ),
    "keys with dots are quoted in the path": (
        "metadata:\n  annotations:\n    example.com/when: !!binary aGk=\n",
        Reason.YAML_REJECTED,
        0,
        'metadata.annotations["example.com/when"]',
        ["!!binary"],
    ),
}


@pytest.mark.parametrize(("text", "expected"), list(ACCEPTED.values()), ids=list(ACCEPTED))
def test_accepted_yaml_becomes_exactly_this_json_data(text, expected):
    """Timestamps, non-string keys, YAML 1.1 numbers and JSON tags load as Kubernetes would read them."""
    documents = load(text)
    assert documents == expected
    # JSON text tells 1 from 1.0 and from true, which == does not.
    assert json.dumps(documents, allow_nan=False) == json.dumps(expected)


@pytest.mark.parametrize(("key", "text"), FLOAT_KEYS.items())
def test_float_keys_are_written_as_go_writes_a_float32(key, text):
    """A float key becomes the text sigs.k8s.io/yaml gives it (FormatFloat 'g', -1, 32)."""
    assert load(f"{key}: x\n") == [(0, {text: "x"})]


def test_loaded_values_are_built_from_json_types_only():
    """No datetime, bytes, set or bool-as-int sneaks through: the exact Python types are JSON's."""
    [(_, value)] = load("a: 2024-01-01\nb: 1\nc: true\nd: 1.5\ne: ~\nf: [x]\n1: {g: h}\n")
    assert isinstance(value, dict)
    assert [type(v) for v in value.values()] == [str, int, bool, float, type(None), list, dict]
    assert all(type(k) is str for k in value)


def test_aliases_are_copies_not_shared_objects():
    """Each alias is an independent copy, so changing one place of a manifest cannot change another."""
    [(_, value)] = load("base: &b {k: v}\nuse: *b\n")
    assert value["base"] == value["use"]
    assert value["base"] is not value["use"]


def test_documents_are_numbered_from_zero_in_results_and_refusals():
    """Indexes count documents from 0, empty ones included, and a refusal names its document's index."""
    assert load("a: 1\n---\n---\nb: 2\n") == [(0, {"a": 1}), (2, {"b": 2})]
    assert_names(refused("a: 1\n---\nb: .nan\n"), 1, "b", ".nan")


@pytest.mark.parametrize(
    ("text", "reason", "index", "path", "needles"), list(REFUSED.values()), ids=list(REFUSED)
)
def test_refused_yaml_names_file_document_and_path(text, reason, index, path, needles):
    """Non-JSON tags and values, bad keys, collisions and unreadable text are refused with where and why."""
    error = refused(text)
    assert error.reason is reason
    assert_names(error, index, path, *needles)


@pytest.mark.parametrize(
    ("text", "limits", "needle"),
    [
        ("[" * 20 + "]" * 20 + "\n", {"max_depth": 10}, "nested deeper than 10 levels"),
        ("a: &a [x]\nb: [*a, *a, *a]\n", {"max_aliases": 2}, "more than 2 aliases"),
        ("[" + ", ".join(["x"] * 50) + "]\n", {"max_nodes_per_document": 20}, "more than 20 nodes"),
        (
            "a: &a [x, x, x, x]\nb: [*a, *a, *a, *a]\n",
            {"max_nodes_per_document": 20},
            "expands beyond 20 nodes",
        ),
        ("a: &a [[[x]]]\nb: [[[*a]]]\n", {"max_depth": 6}, "nested deeper than 6 levels"),
    ],
    ids=["depth", "aliases", "nodes", "expansion", "depth through an alias"],
)
def test_budgets_are_kept(text, limits, needle):
    """Depth, alias, node and expanded-size budgets still refuse, as YAMLRejected naming the document."""
    error = refused(text, **limits)
    assert error.reason is Reason.YAML_REJECTED
    assert_names(error, 0, "", needle)


def test_a_billion_laughs_is_refused_before_it_expands():
    """The classic alias bomb is refused by the alias budget, not by running out of memory."""
    bomb = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n" for i in range(8)
    )
    error = refused(bomb)
    assert error.reason is Reason.YAML_REJECTED
    assert_names(error, 0, "", "aliases")


def test_a_refusal_after_good_documents_still_stops_the_file():
    """Documents before a refused one are yielded; the refusal then ends the iteration."""
    documents = load_documents("a: 1\n---\nb: !!set {x}\n", file=FILE, limits=Limits())
    assert next(documents) == (0, {"a": 1})
    with pytest.raises(Stalled) as caught:
        next(documents)
    assert_names(caught.value, 1, "b", "!!set")


def test_long_keys_and_values_are_clipped_in_messages():
    """A huge key or number cannot push the problem out of the (truncated) message."""
    key = "k" * 5000
    error = refused(f"? {key}\n:\n  x: " + "9" * 5000 + "\n")
    assert_names(error, 0, '["' + "k" * 37 + '..."].x', "64-bit")
    assert len(error.message) < 300
