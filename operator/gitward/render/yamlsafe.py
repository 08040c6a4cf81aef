"""YAML from an untrusted repository, read into plain JSON data under budgets, or refused.

PyYAML's ``SafeLoader`` builds no arbitrary objects but still accepts a
"billion laughs" (aliases that expand exponentially once the data is
walked), silently keeps the last of two duplicate keys (a reviewer sees one
value while the cluster gets another), and hands back values that are YAML
but not JSON: ``bytes`` from ``!!binary``, sets, ``datetime`` from anything
that looks like a date, integers too large for Kubernetes, ``.nan`` and
``.inf``, and mapping keys that are numbers, booleans, null or even lists.
Each of those used to surface as an unhandled exception deep in the
operator, far from the file that caused it.

So this module does not use PyYAML's constructor at all. The composer counts
aliases, nodes and depth while it reads (a bomb is refused after a few
hundred bytes of it, a recursive alias as soon as it appears), and an
iterative builder turns the node graph into JSON data the way Kubernetes'
own YAML-to-JSON step (``sigs.k8s.io/yaml`` over go-yaml) does where that is
safe: a timestamp stays the string as written; an int, float or bool mapping
key becomes its text (``1: a`` is ``{"1": "a"}``). What Kubernetes cannot
hold or would read differently is refused, naming the file, the document and
the path of the value: tags other than the JSON ones, null or non-scalar
keys, keys that collide once converted, integers outside int64, ``.nan`` and
``.inf``, merge keys. Aliases are expanded as copies, counted against the
node budget, so no two places of a result share an object.

:func:`load_documents` yields only data that ``json.dumps(..., allow_nan=False)``
accepts, or raises :class:`~gitward.errors.Stalled`; nothing else escapes.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Iterator
from typing import Any, Final

import yaml
from yaml.composer import Composer
from yaml.events import AliasEvent, CollectionStartEvent, ScalarEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from gitward.api.conditions import Reason
from gitward.errors import Stalled
from gitward.render.limits import Limits

_YAML_TAG: Final = "tag:yaml.org,2002:"
_STR: Final = _YAML_TAG + "str"
_INT: Final = _YAML_TAG + "int"
_FLOAT: Final = _YAML_TAG + "float"
_BOOL: Final = _YAML_TAG + "bool"
_NULL: Final = _YAML_TAG + "null"
_TIMESTAMP: Final = _YAML_TAG + "timestamp"
_MERGE: Final = _YAML_TAG + "merge"
_VALUE: Final = _YAML_TAG + "value"
_SEQ: Final = _YAML_TAG + "seq"
_MAP: Final = _YAML_TAG + "map"

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
# No integer literal with more significant digits than this (in any base, binary included) fits int64.
_MAX_INT_DIGITS: Final = 64
_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_SIMPLE_KEY: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_CLIP: Final = 40

# A link in a path: (parent link, key or index); None is the document itself.
_Path = tuple["_Path", str | int] | None


class _RejectedError(Exception):
    def __init__(self, reason: Reason, message: str, path: _Path = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.path = path

    def describe(self) -> str:
        where = _format_path(self.path)
        return f"{where}: {self}" if where else str(self)


class _BoundedLoader(Reader, Scanner, Parser, Composer, Resolver):
    """PyYAML's reader, scanner, parser, composer and YAML 1.1 resolver, with budgets; no constructor."""

    def __init__(self, stream: str, limits: Limits) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        Resolver.__init__(self)
        self.limits = limits
        self.explicit: set[Node] = set()  # scalars whose tag was written, so their text must fit it
        self._open_anchors: set[str] = set()
        self._aliases = 0
        self._nodes = 0
        self._depth = 0

    def scan_to_next_token(self) -> None:
        """PyYAML's, except that a tab separates tokens within a line, as in YAML 1.2 and Kubernetes' parser.

        PyYAML refuses ``apiVersion: v1<TAB>`` and ``key:<TAB>value``, which
        kubectl and kustomize accept. A tab is skipped only where something
        other than whitespace precedes it on its line; a tab used for
        indentation is still refused, as every YAML parser does.
        """
        if self.index == 0 and self.peek() == "\ufeff":
            self.forward()
        found = False
        while not found:
            while self.peek() == " " or (self.peek() == "\t" and not self._in_indentation()):
                self.forward()
            if self.peek() == "#":
                while self.peek() not in "\0\r\n\x85\u2028\u2029":
                    self.forward()
            if self.scan_line_break():  # type: ignore[no-untyped-call]  # untyped in types-PyYAML
                if not self.flow_level:
                    self.allow_simple_key = True
            else:
                found = True

    def _in_indentation(self) -> bool:
        """Whether only whitespace precedes the current position on its line."""
        start = self.pointer - self.column
        return start >= 0 and not self.buffer[start : self.pointer].strip(" \t")

    def compose_document(self) -> Node | None:
        self.explicit = set()
        self._open_anchors = set()
        self._aliases = 0
        self._nodes = 0
        self._depth = 0
        node: Node | None = super().compose_document()
        return node

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in types-PyYAML
        line = event.start_mark.line + 1
        if isinstance(event, AliasEvent):
            self._aliases += 1
            if self._aliases > self.limits.max_aliases:
                raise _RejectedError(Reason.YAML_REJECTED, f"more than {self.limits.max_aliases} aliases")
            if event.anchor in self._open_anchors:
                raise _RejectedError(
                    Reason.YAML_REJECTED,
                    f"the alias *{_clip(event.anchor)} at line {line} is inside the collection it names",
                )
        self._nodes += 1
        if self._nodes > self.limits.max_nodes_per_document:
            raise _RejectedError(
                Reason.YAML_REJECTED, f"more than {self.limits.max_nodes_per_document} nodes"
            )
        self._depth += 1
        anchor = event.anchor if isinstance(event, CollectionStartEvent) else None
        try:
            if self._depth > self.limits.max_depth:
                raise _RejectedError(
                    Reason.YAML_REJECTED, f"nested deeper than {self.limits.max_depth} levels (line {line})"
                )
            if anchor is not None:
                self._open_anchors.add(anchor)
            node: Node | None = super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor is not None:
                self._open_anchors.discard(anchor)
        if isinstance(event, ScalarEvent) and event.tag not in {None, "!"} and node is not None:
            self.explicit.add(node)
        return node

    def plain_tag(self, text: str) -> str:
        """The tag YAML 1.1 gives ``text`` written plain: what the text of an explicit tag must match."""
        tag: str = self.resolve(ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
        return tag


class _Builder:
    """Turns one document's node graph into JSON data, iteratively, expanding aliases as counted copies."""

    def __init__(self, loader: _BoundedLoader) -> None:
        self.loader = loader
        self.limits = loader.limits
        self.count = 0

    def build(self, root: Node) -> Any:  # noqa: ANN401 - JSON data
        result: list[Any] = [None]
        # (node, the container and slot its value goes to, its path, its depth), in document order.
        stack: list[tuple[Node, Any, str | int, _Path, int]] = [(root, result, 0, None, 1)]
        while stack:
            node, container, slot, path, depth = stack.pop()
            self._count(node, depth, path)
            if isinstance(node, ScalarNode):
                container[slot] = self._value(node, path)
            elif isinstance(node, SequenceNode):
                self._check_collection_tag(node, _SEQ, path)
                items: list[Any] = [None] * len(node.value)
                container[slot] = items
                stack.extend(
                    (child, items, i, (path, i), depth + 1)
                    for i, child in reversed(list(enumerate(node.value)))
                )
            elif isinstance(node, MappingNode):
                self._check_collection_tag(node, _MAP, path)
                mapping: dict[str, Any] = {}
                container[slot] = mapping
                children = []
                for key_node, value_node in node.value:
                    self._count(key_node, depth + 1, path)
                    key = self._key(key_node, path)
                    if key in mapping:
                        raise _RejectedError(
                            Reason.DUPLICATE_KEY,
                            f"duplicate key {_clip(key)!r} at line {_line(key_node)}",
                            (path, key),
                        )
                    mapping[key] = None
                    children.append((value_node, mapping, key, (path, key), depth + 1))
                stack.extend(reversed(children))
            else:  # pragma: no cover - the composer makes only these three
                raise _RejectedError(Reason.YAML_REJECTED, f"unexpected node {type(node).__name__}", path)
        return result[0]

    def _count(self, node: Node, depth: int, path: _Path) -> None:
        self.count += 1
        if self.count > self.limits.max_nodes_per_document:
            raise _RejectedError(
                Reason.YAML_REJECTED, f"expands beyond {self.limits.max_nodes_per_document} nodes"
            )
        if depth > self.limits.max_depth:
            raise _RejectedError(
                Reason.YAML_REJECTED,
                f"nested deeper than {self.limits.max_depth} levels (line {_line(node)})",
                path,
            )

    def _check_collection_tag(self, node: Node, expected: str, path: _Path) -> None:
        if node.tag != expected:
            kind = "sequence" if expected == _SEQ else "mapping"
            raise _RejectedError(Reason.YAML_REJECTED, _not_allowed(node.tag, f" on a {kind}"), path)

    def _key(self, node: Node, path: _Path) -> str:
        line = _line(node)
        if not isinstance(node, ScalarNode):
            raise _RejectedError(Reason.YAML_REJECTED, f"mapping keys must be scalars (line {line})", path)
        if node.tag == _MERGE:
            raise _RejectedError(Reason.YAML_REJECTED, f"merge keys (<<) are not allowed (line {line})", path)
        try:
            key = self._scalar(node, path)
        except _RejectedError as error:
            raise _RejectedError(error.reason, f"the key at line {line}: {error}", path) from None
        # As sigs.k8s.io/yaml turns go-yaml's keys into JSON's: text for bool, int and float; null refused.
        if key is None:
            raise _RejectedError(
                Reason.YAML_REJECTED, f"a mapping key is null (line {line}); JSON keys are strings", path
            )
        if isinstance(key, bool):
            return "true" if key else "false"
        if isinstance(key, float):
            return _go_float32_text(key)
        return str(key)

    def _value(self, node: ScalarNode, path: _Path) -> str | int | float | bool | None:
        value = self._scalar(node, path)
        if isinstance(value, float) and not math.isfinite(value):
            raise _RejectedError(
                Reason.YAML_REJECTED,
                f"{_clip(node.value)} is not a JSON number (NaN and infinity are not)",
                path,
            )
        return value

    def _scalar(self, node: ScalarNode, path: _Path) -> str | int | float | bool | None:
        """The scalar's JSON value; a float is infinite or NaN only when spelled ``.inf`` or ``.nan``."""
        tag: str = node.tag
        text: str = node.value
        if tag == _STR:
            return _text(text, path)
        explicit = node in self.loader.explicit
        if tag in {_MERGE, _VALUE}:
            # ``<<`` and ``=`` written as values: YAML 1.1 names them, JSON and Kubernetes see text.
            if explicit:
                raise _RejectedError(Reason.YAML_REJECTED, _not_allowed(tag), path)
            return text
        if tag not in {_NULL, _BOOL, _INT, _FLOAT, _TIMESTAMP}:
            raise _RejectedError(Reason.YAML_REJECTED, _not_allowed(tag), path)
        plain = self.loader.plain_tag(text) if explicit else tag
        if plain != tag and not (tag == _FLOAT and plain == _INT):
            raise _RejectedError(Reason.YAML_REJECTED, f"{_clip(text)!r} is not a valid {_short(tag)}", path)
        return _resolved(tag, plain, text, path)


def _resolved(tag: str, plain: str, text: str, path: _Path) -> int | float | bool | str | None:
    """The value of a null, bool, timestamp, int or float scalar whose text fits its tag."""
    if tag == _NULL:
        return None
    if tag == _BOOL:
        return text.lower() in {"yes", "true", "on"}
    if tag == _TIMESTAMP:
        # As Kubernetes' YAML-to-JSON does: the text as written, never a datetime.
        return text
    if plain == _INT:
        number = _parse_int(text, path)
        return float(number) if tag == _FLOAT else number
    return _parse_float(text, path)


def _parse_int(text: str, path: _Path) -> int:
    """A YAML 1.1 integer (``0b``, ``0x``, leading-``0`` octal, base 60), refused outside int64."""
    digits = text.replace("_", "")
    sign = -1 if digits.startswith("-") else 1
    if digits[:1] in {"-", "+"}:
        digits = digits[1:]
    base = 10
    if digits.startswith(("0b", "0x")):
        base, digits = (2 if digits[1] == "b" else 16), digits[2:]
    elif ":" in digits:
        return sign * _parse_base60(digits, text, path)
    elif len(digits) > 1 and digits.startswith("0"):
        base = 8
    if not digits:
        raise _RejectedError(Reason.YAML_REJECTED, f"{_clip(text)!r} is not a valid integer", path)
    significant = digits.lstrip("0") or "0"
    if len(significant) > _MAX_INT_DIGITS:
        raise _out_of_range(text, path)
    number = sign * int(significant, base)
    if not _INT64_MIN <= number <= _INT64_MAX:
        raise _out_of_range(text, path)
    return number


def _parse_base60(digits: str, text: str, path: _Path) -> int:
    """``1:30`` is 90 in YAML 1.1; stops as soon as the value leaves int64, so work stays small."""
    parts = digits.split(":")
    if len(parts[0]) > _MAX_INT_DIGITS:
        raise _out_of_range(text, path)
    number = 0
    for part in parts:
        number = number * 60 + int(part)
        if number > _INT64_MAX + 1:
            raise _out_of_range(text, path)
    return number


def _out_of_range(text: str, path: _Path) -> _RejectedError:
    return _RejectedError(
        Reason.YAML_REJECTED,
        f"the integer {_clip(text)} is outside the signed 64-bit range Kubernetes can hold",
        path,
    )


def _parse_float(text: str, path: _Path) -> float:
    """A YAML 1.1 float; infinity or NaN only when written so, never from an overflowing literal."""
    digits = text.replace("_", "").lower()
    sign = -1.0 if digits.startswith("-") else 1.0
    digits = digits.lstrip("+-")
    if digits == ".inf":
        return sign * math.inf
    if digits == ".nan":
        return math.nan
    try:
        if ":" in digits:
            number = 0.0
            for part in digits.split(":"):
                number = number * 60 + float(part)
                if not math.isfinite(number):
                    break
        else:
            number = float(digits)
    except ValueError:
        raise _RejectedError(Reason.YAML_REJECTED, f"{_clip(text)!r} is not a valid float", path) from None
    if not math.isfinite(number):
        raise _RejectedError(Reason.YAML_REJECTED, f"the float {_clip(text)} is out of range", path)
    return sign * number


def _text(text: str, path: _Path) -> str:
    """A string as JSON sees it: escaped surrogate pairs joined, a lone surrogate refused."""
    if _SURROGATE.search(text) is None:
        return text
    try:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
    except UnicodeDecodeError:
        raise _RejectedError(
            Reason.YAML_REJECTED, "an escaped unpaired surrogate (\\ud800-\\udfff) is not text", path
        ) from None


def _go_float32_text(number: float) -> str:
    """A float key as ``sigs.k8s.io/yaml`` writes it: Go's ``FormatFloat(key, 'g', -1, 32)``."""
    if math.isnan(number):
        return ".nan"
    try:
        single: float = struct.unpack("<f", struct.pack("<f", number))[0]
    except OverflowError:  # past float32's range: Go's float32() conversion gives infinity
        single = math.copysign(math.inf, number)
    if math.isinf(single):
        return ".inf" if single > 0 else "-.inf"
    sign = "-" if math.copysign(1.0, single) < 0 else ""
    single = abs(single)
    if single == 0:
        return sign + "0"
    text = f"{single:.8e}"
    for precision in range(9):  # the fewest significant digits that read back as the same float32
        text = f"{single:.{precision}e}"
        if struct.unpack("<f", struct.pack("<f", float(text)))[0] == single:
            break
    mantissa, exponent = text.split("e")
    digits = mantissa.replace(".", "").rstrip("0") or "0"
    point = int(exponent) + 1  # digits before the decimal point, as Go's decimal.dp
    if not -4 <= point - 1 < 6:  # noqa: PLR2004 - Go's limits for 'g' with the shortest precision
        fraction = f".{digits[1:]}" if len(digits) > 1 else ""
        return f"{sign}{digits[0]}{fraction}e{'-' if point <= 0 else '+'}{abs(point - 1):02d}"
    if point > 0:
        whole, fraction = digits[:point].ljust(point, "0"), digits[point:]
    else:
        whole, fraction = "0", "0" * -point + digits
    return f"{sign}{whole}.{fraction}" if fraction else f"{sign}{whole}"


def _line(node: Node) -> int:
    return node.start_mark.line + 1 if node.start_mark is not None else 0


def _short(tag: str) -> str:
    shown = "!!" + tag.removeprefix(_YAML_TAG) if tag.startswith(_YAML_TAG) else tag
    shown = _clip(shown)
    return shown if shown.isprintable() else repr(shown)


def _not_allowed(tag: str, where: str = "") -> str:
    return f"the tag {_short(tag)} is not allowed{where}; a manifest holds JSON data only"


def _clip(text: str, limit: int = _CLIP) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _format_path(path: _Path) -> str:
    parts: list[str | int] = []
    while path is not None:
        path, part = path
        parts.append(part)
    out = ""
    for part in reversed(parts):
        if isinstance(part, int):
            out += f"[{part}]"
        elif _SIMPLE_KEY.fullmatch(part := _clip(part)):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out


def _first_line(error: BaseException) -> str:
    lines = str(error).splitlines()
    return lines[0] if lines else type(error).__name__


def load_documents(text: str, *, file: str, limits: Limits) -> Iterator[tuple[int, Any]]:
    """Yield ``(document index, value)`` for each non-empty document; refusals name file and document.

    Every value is JSON data (``dict`` with ``str`` keys, ``list``, ``str``,
    ``int`` within int64, finite ``float``, ``bool``, ``None``). Anything else,
    and anything over a budget, raises :class:`~gitward.errors.Stalled` with
    ``YAMLRejected`` (``DuplicateKey`` for duplicate keys) and a message
    ``file#index: path: problem``.
    """
    index = 0
    loader: _BoundedLoader | None = None
    try:
        while True:
            try:
                if loader is None:
                    loader = _BoundedLoader(text, limits)  # the reader refuses control characters here
                if not loader.check_node():
                    return
                node = loader.get_node()
                value = _Builder(loader).build(node) if node is not None else None
            except _RejectedError as error:
                raise Stalled(error.reason, f"{file}#{index}: {error.describe()}") from None
            except yaml.MarkedYAMLError as error:
                mark = error.problem_mark
                where = f" at line {mark.line + 1}" if mark is not None else ""
                problem = error.problem or _first_line(error)
                raise Stalled(
                    Reason.YAML_REJECTED, f"{file}#{index}: not valid YAML{where}: {problem}"
                ) from None
            except yaml.YAMLError as error:
                raise Stalled(
                    Reason.YAML_REJECTED, f"{file}#{index}: not valid YAML: {_first_line(error)}"
                ) from None
            except RecursionError:
                raise Stalled(Reason.YAML_REJECTED, f"{file}#{index}: nested too deeply") from None
            except (ValueError, OverflowError) as error:
                # PyYAML's scanner lets a few Python errors through: a \U escape past U+10FFFF, a
                # %YAML version of thousands of digits. Either way the text is not YAML we can read.
                raise Stalled(
                    Reason.YAML_REJECTED,
                    f"{file}#{index}: not valid YAML at line {loader.line + 1 if loader else 1}: "
                    f"{type(error).__name__}: {_first_line(error)}",
                ) from None
            if value is not None:
                yield index, value
            index += 1
    finally:
        if loader is not None:
            loader.dispose()
