"""The text layer of a PyTorch printout: lines into a tree of modules (`parse_tree`, `leaves`)
and a module's argument text into checked values (`bind`, `as_int`, `square`). What each
module means is `printout.py`'s job."""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Iterator, Sequence
from typing import Any

CONTAINERS = frozenset({"Sequential", "ModuleList"})


class PrintoutError(ValueError):
    """A printout we cannot read; the message names the 1-based line and the layer text."""


# `(key): ` and ModuleList's `N x ` repeat prefix are optional; `rest` starts at the parenthesis.
_LINE_RE = re.compile(
    r"^(?:\((?P<key>[^()]*)\):\s*)?(?:(?P<count>\d+) x )?"
    r"(?P<name>[A-Za-z_]\w*)\s*(?P<rest>\(.*)$"
)


@dataclasses.dataclass
class Node:
    """One printed module: a leaf (``args`` is its argument text) or a container (``args`` None)."""

    line: int
    text: str  # the line without its `(key): ` / `N x ` prefix, for error messages
    name: str
    key: str | None
    count: int
    args: str | None
    children: list[Node] = dataclasses.field(default_factory=list)


def error_at(line: int, text: str, message: str) -> PrintoutError:
    return PrintoutError(f"line {line}: '{text}': {message}")


def unsupported(node, reason: str | None = None) -> PrintoutError:
    message = f"line {node.line}: unsupported layer '{node.text}'"
    return PrintoutError(message + (f": {reason}" if reason else ""))


def _closes_at_end(rest: str) -> bool:
    """Whether the parenthesis opening `rest` closes exactly at its last character."""
    depth = 0
    for index, char in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return index == len(rest) - 1
    return False


def _parse_line(number: int, stripped: str) -> Node:
    match = _LINE_RE.match(stripped)
    if match is None:
        raise PrintoutError(f"line {number}: cannot read '{stripped}' as a module")
    rest = match["rest"]
    text = stripped[match.start("name") :]
    count = int(match["count"] or 1)
    if rest == "(":
        return Node(number, text, match["name"], match["key"], count, None)
    if not _closes_at_end(rest):
        raise PrintoutError(f"line {number}: unbalanced parentheses in '{stripped}'")
    return Node(number, text, match["name"], match["key"], count, rest[1:-1])


def parse_tree(text: str) -> list[Node]:
    """Top-level modules of a printout, with their children nested (indentation is ignored)."""
    roots: list[Node] = []
    stack: list[Node] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped:
            continue
        if stripped == ")":
            if not stack:
                raise PrintoutError(f"line {number}: ')' closes nothing")
            stack.pop()
            continue
        node = _parse_line(number, stripped)
        (stack[-1].children if stack else roots).append(node)
        if node.args is None:
            stack.append(node)
    if stack:
        raise PrintoutError(f"line {stack[-1].line}: '{stack[-1].text}' is never closed")
    return roots


def leaves(nodes: Sequence[Node], modules: frozenset, depth: int = 0) -> Iterator[Node]:
    """Leaf modules in printed order; the model's own class and Sequential/ModuleList are opened
    (an empty one is skipped unless its name is one of the layer `modules` a parser reads)."""
    for node in nodes:
        # The model's class (unkeyed, top level) may have any name; nested blocks of other
        # classes have their own forward (residual additions, branches) that a printout hides.
        transparent = node.name in CONTAINERS or (depth == 0 and node.key is None)
        for _ in range(node.count):
            if node.args is None:
                if not transparent:
                    raise unsupported(
                        node,
                        "residual/custom blocks are unsupported (only Sequential and ModuleList "
                        "containers are flattened)",
                    )
                yield from leaves(node.children, modules, depth + 1)
            elif transparent and not node.args.strip() and node.name not in modules:
                continue  # an empty container, e.g. `(features): Sequential()`
            else:
                yield node


# ---- arguments -------------------------------------------------------------------------------


def _split_args(text: str) -> list[str]:
    """Splits at the commas outside parentheses/brackets."""
    parts, depth, current = [], 0, []
    for char in text:
        depth += {"(": 1, "[": 1, ")": -1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    last = "".join(current).strip()
    if last or parts:
        parts.append(last)
    return parts


def _value(node: Node, text: str) -> Any:
    """A Python literal, or a bare word (PyTorch prints `padding=same`, `padding_mode=zeros`)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if re.fullmatch(r"[A-Za-z_]\w*", text):
            return text
        raise unsupported(node, f"cannot read the value {text!r}") from None


def bind(
    node: Node, params: Sequence[str], defaults: dict[str, Any], kwonly: Sequence[str] = ()
) -> dict[str, Any]:
    """Binds the printed arguments like the PyTorch constructor would; unknown ones are errors."""
    values = dict(defaults)
    given: set[str] = set()
    keyword_seen = False
    for index, part in enumerate(_split_args(node.args or "")):
        match = re.fullmatch(r"([A-Za-z_]\w*)\s*=\s*(.+)", part, re.S)
        if match:
            name, raw, keyword_seen = match[1], match[2], True
            if name not in params and name not in kwonly:
                raise unsupported(node, f"unknown argument {name!r}")
        elif keyword_seen:
            raise unsupported(node, f"positional argument {part!r} after a keyword argument")
        elif index < len(params):
            name, raw = params[index], part
        else:
            raise unsupported(node, "too many arguments")
        if not raw or name in given:
            raise unsupported(node, f"empty or repeated argument {name!r}")
        given.add(name)
        values[name] = _value(node, raw)
    missing = [p for p in params if p not in values]
    if missing:
        raise unsupported(node, f"missing argument(s) {', '.join(missing)}")
    return values


def as_int(node: Node, value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise unsupported(node, f"{field} must be an integer, got {value!r}")
    return value


def square(node: Node, value: Any, field: str) -> int:
    """An int, or a tuple of equal ints (PyTorch prints `kernel_size=(3, 3)`)."""
    if isinstance(value, tuple):
        if len(value) not in (1, 2) or len(set(value)) != 1:
            raise unsupported(node, f"non-square {field}={value} (only square ones are supported)")
        value = value[0]
    return as_int(node, value, field)


def require(node: Node, ok: bool, reason: str) -> None:
    if not ok:
        raise unsupported(node, reason)
