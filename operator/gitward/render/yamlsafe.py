"""YAML with the safe loader, bounded: depth, aliases, nodes, documents; duplicate keys refused.

PyYAML's ``SafeLoader`` builds no arbitrary objects but still accepts a
"billion laughs" (aliases that expand exponentially once the data is
walked) and silently keeps the last of two duplicate keys, which lets a
reviewer see one value while the cluster gets another. This loader counts
aliases and nodes while composing, so a bomb is refused after reading a few
hundred bytes of it, and refuses duplicate keys outright.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node

from gitward.api.conditions import Reason
from gitward.errors import Stalled
from gitward.render.limits import Limits


class _RejectedError(Exception):
    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _BoundedLoader(yaml.SafeLoader):
    limits: Limits = Limits()

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._nodes = 0
        self._depth = 0

    def compose_document(self) -> Node | None:
        self._aliases = 0
        self._nodes = 0
        self._depth = 0
        node: Node | None = super().compose_document()
        return node

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > self.limits.max_aliases:
                raise _RejectedError(Reason.YAML_REJECTED, f"more than {self.limits.max_aliases} aliases")
        self._nodes += 1
        if self._nodes > self.limits.max_nodes_per_document:
            raise _RejectedError(
                Reason.YAML_REJECTED, f"more than {self.limits.max_nodes_per_document} nodes"
            )
        self._depth += 1
        try:
            if self._depth > self.limits.max_depth:
                raise _RejectedError(
                    Reason.YAML_REJECTED, f"nested deeper than {self.limits.max_depth} levels"
                )
            node: Node | None = super().compose_node(parent, index)
            return node
        finally:
            self._depth -= 1

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:  # noqa: FBT001, FBT002
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise _RejectedError(Reason.YAML_REJECTED, "merge keys (<<) are not allowed")
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                raise _RejectedError(Reason.YAML_REJECTED, "mapping keys must be scalars") from None
            if duplicate:
                line = key_node.start_mark.line + 1
                raise _RejectedError(Reason.DUPLICATE_KEY, f"duplicate key {key!r} at line {line}")
            seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def _expanded_size_ok(value: object, budget: int) -> bool:
    """Count nodes as if aliases were copies (they are, once serialized); stop past ``budget``."""
    stack = [value]
    count = 0
    while stack:
        item = stack.pop()
        count += 1
        if count > budget:
            return False
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def load_documents(
    text: str, *, file: str, limits: Limits, first_index: int = 0
) -> Iterator[tuple[int, Any]]:
    """Yield ``(document index, value)`` for each non-empty document; refusals name file and document."""
    loader_class = type("Loader", (_BoundedLoader,), {"limits": limits})
    loader = loader_class(text)
    index = first_index - 1
    try:
        while loader.check_node():
            index += 1
            try:
                node = loader.get_node()
                value = loader.construct_document(node) if node is not None else None
            except _RejectedError as error:
                raise Stalled(error.reason, f"{file}#{index}: {error}") from None
            except (yaml.YAMLError, ConstructorError) as error:
                problem = getattr(error, "problem", None) or str(error).splitlines()[0]
                mark = getattr(error, "problem_mark", None)
                where = f" at line {mark.line + 1}" if mark is not None else ""
                raise Stalled(
                    Reason.YAML_REJECTED, f"{file}#{index}: not valid YAML{where}: {problem}"
                ) from None
            except RecursionError:
                raise Stalled(Reason.YAML_REJECTED, f"{file}#{index}: nested too deeply") from None
            if value is None:
                continue
            if not _expanded_size_ok(value, limits.max_nodes_per_document):
                raise Stalled(
                    Reason.YAML_REJECTED,
                    f"{file}#{index}: expands beyond {limits.max_nodes_per_document} nodes",
                )
            yield index, value
    except yaml.YAMLError as error:
        raise Stalled(
            Reason.YAML_REJECTED, f"{file}#{index + 1}: not valid YAML: {str(error).splitlines()[0]}"
        ) from None
    finally:
        loader.dispose()
