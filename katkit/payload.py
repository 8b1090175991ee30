"""What user data must be to cross into a workflow: JSON that a UTF-8 payload holds. Shared by the parsers of the
repository's files and of katkit.yaml, so a bad value is one line of bad input, never a failure inside Temporal."""

from __future__ import annotations

from typing import Any


def show(value: Any) -> str:
    """A value from a user's file for a one-line message: a short repr, never a whole array or object."""
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return "a very large number"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def unfit(data: Any, max_depth: int | None = None) -> tuple[str, str] | None:
    """Why ``data`` cannot go into a payload, as (problem, fix), or None when it can: a string with an unpaired
    surrogate ("\\ud800": JSON and YAML allow it, UTF-8 does not), or nesting deeper than ``max_depth``.

    Iterative, and once per object (YAML aliases share objects: a tree walk could take exponential time)."""
    todo, seen = [(data, 1)], set()
    while todo:
        node, depth = todo.pop()
        if isinstance(node, str):
            if not node.isascii():
                try:
                    node.encode("utf-8")
                except UnicodeEncodeError:
                    return f"the string {show(node)} holds an unpaired surrogate", "write the character itself, not \\uD800-\\uDFFF"
        elif isinstance(node, (dict, list, tuple, set, frozenset)) and id(node) not in seen:
            if max_depth is not None and depth > max_depth:
                return f"nested too deeply (more than {max_depth} levels)", "flatten the arrays and objects"
            seen.add(id(node))
            todo.extend((child, depth + 1) for child in ([*node, *node.values()] if isinstance(node, dict) else node))
    return None
