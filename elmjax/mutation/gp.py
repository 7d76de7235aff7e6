"""Genetic-programming mutation: the baseline ELM is measured against.

Each mutation picks one site in the program's syntax tree and changes it the way a GP system
would: perturb a numeric constant, swap an arithmetic or comparison operator, swap one identifier
for another the program uses (or rename a variable everywhere), duplicate, delete or insert a
statement, or change a loop bound. A mutation is deterministic for its `random.Random`.

The changed node is rendered with `ast.unparse` and spliced into the *original text* at the
node's source span, rather than unparsing the whole module: the rest of the program keeps its
comments and layout, so a GP child differs from its parent only where it was mutated. That is
what makes (parent, child) pairs usable as diff training data (elm-tiny) and what lets the
benchmarks compare operators on "% different" honestly.
"""

from __future__ import annotations

import ast
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

#: Kinds of mutation and their relative weights. Constants dominate, as in the paper's
#: observation that most useful Sodarace edits are parameter changes.
KINDS: dict[str, float] = {
    "constant": 4.0,
    "operator": 1.5,
    "swap_identifier": 1.0,
    "rename": 0.5,
    "duplicate": 1.0,
    "delete": 1.0,
    "insert": 1.0,
    "loop_bound": 1.0,
}

_ARITH = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)
_COMPARE = (ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq)
_KEEP_NAMES = {"range", "len", "print", "walker_creator", "math", "random", "True", "False"}


class GPError(ValueError):
    """No mutation of the requested kind exists in this program."""


@dataclass(frozen=True)
class Mutation:
    """A mutated program and what was done to it."""

    text: str
    kind: str
    detail: str


def mutate(text: str, rng: random.Random, kinds: dict[str, float] | None = None) -> Mutation:
    """One GP mutation of `text`, which must parse. Kinds without a site are skipped; the child
    always parses and differs from the parent. Raises GPError when nothing applies."""
    tree = ast.parse(text)
    weights = dict(kinds or KINDS)
    while weights:
        kind = rng.choices(list(weights), weights=list(weights.values()), k=1)[0]
        try:
            child, detail = _MUTATORS[kind](text, tree, rng)
        except GPError:
            del weights[kind]
            continue
        if child != text and _parses(child):
            return Mutation(child, kind, detail)
        del weights[kind]
    raise GPError("no mutation applies to this program")


def mutate_n(text: str, rng: random.Random, steps: int) -> Mutation:
    """`steps` successive mutations (a GP child several edits away); details joined by '; '."""
    kinds, details = [], []
    for _ in range(steps):
        m = mutate(text, rng)
        text = m.text
        kinds.append(m.kind)
        details.append(m.detail)
    return Mutation(text, "+".join(kinds), "; ".join(details))


# ---- source splicing -------------------------------------------------------------------------------


def _line_offsets(text: str) -> list[int]:
    offsets, total = [0], 0
    for line in text.splitlines(keepends=True):
        total += len(line)
        offsets.append(total)
    return offsets


def _char_col(text: str, offsets: list[int], lineno: int, col: int) -> int:
    """Absolute character index of (1-based line, UTF-8 byte column)."""
    line_start = offsets[lineno - 1]
    line = text[line_start : offsets[lineno] if lineno < len(offsets) else len(text)]
    return line_start + len(line.encode("utf-8")[:col].decode("utf-8", errors="ignore"))


def _replace_node(text: str, node: ast.AST, replacement: str) -> str:
    offsets = _line_offsets(text)
    start = _char_col(text, offsets, node.lineno, node.col_offset)
    end = _char_col(text, offsets, node.end_lineno, node.end_col_offset)
    return text[:start] + replacement + text[end:]


def _parses(text: str) -> bool:
    try:
        ast.parse(text)
    except (SyntaxError, ValueError):
        return False
    return True


def _pick(rng: random.Random, items: list, what: str):
    if not items:
        raise GPError(f"no {what} in the program")
    return items[rng.randrange(len(items))]


# ---- expression mutations --------------------------------------------------------------------------


def _constant(text: str, tree: ast.AST, rng: random.Random) -> tuple[str, str]:
    nodes = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant)
        and type(n.value) in (int, float)
        and math.isfinite(n.value)
        and hasattr(n, "end_col_offset")
    ]
    node = _pick(rng, nodes, "numeric constant")
    value = node.value
    if isinstance(value, int):
        new: float = value + rng.choice((-2, -1, 1, 2)) if rng.random() < 0.7 else value * 2
        if value >= 0 and new < 0:
            new = value + 1
    elif value == 0 or rng.random() < 0.25:
        new = round(value + rng.gauss(0.0, 1.0), 2)
    else:
        new = round(value * math.exp(rng.gauss(0.0, 0.35)), 3)
        if new == value:
            new = round(value + rng.choice((-0.5, 0.5)), 3)
    shown = repr(new) if new >= 0 else f"({new!r})"  # `-(-1.5)`, never `--1.5`
    return _replace_node(text, node, shown), f"constant {value!r} -> {new!r}"


_SYMBOLS = {
    ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%",
    ast.Pow: "**", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==",
    ast.NotEq: "!=",
}  # fmt: skip


def _operator(text: str, tree: ast.AST, rng: random.Random) -> tuple[str, str]:
    """Swap one operator token (`+` -> `*`, `<` -> `>=`, `+=` -> `-=`) in place."""
    sites: list[tuple[ast.AST, ast.AST, type]] = []
    for n in ast.walk(tree):
        if isinstance(n, ast.BinOp) and isinstance(n.op, _ARITH):
            sites.append((n.left, n.right, type(n.op)))
        elif isinstance(n, ast.AugAssign) and isinstance(n.op, _ARITH):
            sites.append((n.target, n.value, type(n.op)))
        elif isinstance(n, ast.Compare) and len(n.ops) == 1 and type(n.ops[0]) in _SYMBOLS:
            sites.append((n.left, n.comparators[0], type(n.ops[0])))
    left, right, old = _pick(rng, sites, "operator")
    family = _COMPARE if old in _COMPARE else _ARITH
    new = rng.choice([c for c in family if c is not old])
    offsets = _line_offsets(text)
    a = _char_col(text, offsets, left.end_lineno, left.end_col_offset)
    b = _char_col(text, offsets, right.lineno, right.col_offset)
    gap = text[a:b]
    core = gap.replace("(", "").replace(")", "").replace("\\", "").strip()
    if core.rstrip("=") != _SYMBOLS[old] and core != _SYMBOLS[old]:
        raise GPError("operator token not found between its operands")
    at = gap.index(_SYMBOLS[old], gap.index(core[0]))
    gap = gap[:at] + _SYMBOLS[new] + gap[at + len(_SYMBOLS[old]) :]
    return text[:a] + gap + text[b:], f"operator {_SYMBOLS[old]} -> {_SYMBOLS[new]}"


def _names(tree: ast.AST) -> list[ast.Name]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id not in _KEEP_NAMES]


def _identifiers(tree: ast.AST) -> set[str]:
    """Every variable name the program binds or reads, function parameters included."""
    names = {n.id for n in _names(tree)}
    names |= {a.arg for a in ast.walk(tree) if isinstance(a, ast.arg)}
    return names - _KEEP_NAMES


def _swap_identifier(text: str, tree: ast.AST, rng: random.Random) -> tuple[str, str]:
    """Replace one read of a variable with another identifier the program uses."""
    loads = [n for n in _names(tree) if isinstance(n.ctx, ast.Load)]
    node = _pick(rng, loads, "variable read")
    others = sorted(_identifiers(tree) - {node.id})
    other = _pick(rng, others, "other identifier")
    return _replace_node(text, node, other), f"identifier {node.id} -> {other} (one use)"


def _rename(text: str, tree: ast.AST, rng: random.Random) -> tuple[str, str]:
    """Rename every occurrence of one variable (to a fresh name or to another existing one)."""
    ids = sorted({n.id for n in _names(tree)})
    old = _pick(rng, ids, "variable")
    pool = sorted(_identifiers(tree) - {old})
    new = rng.choice(pool) if pool and rng.random() < 0.5 else f"{old}_{rng.randrange(10)}"
    nodes = sorted(
        (n for n in _names(tree) if n.id == old),
        key=lambda n: (n.lineno, n.col_offset),
        reverse=True,
    )
    for n in nodes:  # from the end, so earlier spans stay valid
        text = _replace_node(text, n, new)
    return text, f"rename {old} -> {new} ({len(nodes)} uses)"


def _loop_bound(text: str, tree: ast.AST, rng: random.Random) -> tuple[str, str]:
    calls = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.For)
        and isinstance(n.iter, ast.Call)
        and isinstance(n.iter.func, ast.Name)
        and n.iter.func.id == "range"
        and n.iter.args
    ]
    loop = _pick(rng, calls, "range() loop")
    arg = loop.iter.args[-1] if len(loop.iter.args) < 3 else loop.iter.args[1]
    delta = rng.choice((-2, -1, 1, 2))
    if isinstance(arg, ast.Constant) and type(arg.value) is int:
        new = repr(max(arg.value + delta, 0))
    else:
        new = f"{ast.unparse(arg)} {'+' if delta > 0 else '-'} {abs(delta)}"
    return _replace_node(text, arg, new), f"loop bound {ast.unparse(arg)} -> {new}"


# ---- statement mutations ---------------------------------------------------------------------------


def _bodies(tree: ast.AST) -> list[list[ast.stmt]]:
    out = []
    for node in ast.walk(tree):
        for name in ("body", "orelse", "finalbody"):
            body = getattr(node, name, None)
            if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
                out.append(body)
    return out


def _inner_statements(tree: ast.AST) -> list[tuple[list[ast.stmt], int]]:
    """(body, index) of statements inside functions -- never a def, import or return at module
    level, whose loss would only produce an invalid program."""
    out = []
    for body in _bodies(tree):
        if body is getattr(tree, "body", None):
            continue
        for k, stmt in enumerate(body):
            if not isinstance(stmt, ast.FunctionDef | ast.Return):
                out.append((body, k))
    return out


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def _statement_lines(lines: list[str], stmt: ast.stmt) -> tuple[int, int]:
    start = stmt.lineno - 1
    if stmt.decorator_list if hasattr(stmt, "decorator_list") else False:
        start = stmt.decorator_list[0].lineno - 1
    return start, stmt.end_lineno


def _whole_lines(lines: list[str], stmt: ast.stmt) -> bool:
    """The statement owns its lines (no `a = 1; b = 2` sharing a line with a neighbour)."""
    start, end = _statement_lines(lines, stmt)
    head = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
    tail = lines[end - 1]
    end_col = len(tail.encode("utf-8")[: stmt.end_col_offset].decode("utf-8", errors="ignore"))
    rest = tail[end_col:].strip()
    return len(head) == stmt.col_offset and (not rest or rest.startswith("#"))


def _duplicate(text: str, tree: ast.AST, rng: random.Random) -> tuple[str, str]:
    lines = _lines(text)
    sites = [(b, k) for b, k in _inner_statements(tree) if _whole_lines(lines, b[k])]
    body, k = _pick(rng, sites, "statement")
    start, end = _statement_lines(lines, body[k])
    block = lines[start:end]
    if not block[-1].endswith("\n"):
        block = block[:-1] + [block[-1] + "\n"]
        lines[end - 1] += "\n"
    lines[end:end] = block
    return "".join(lines), f"duplicate line {start + 1}"


def _delete(text: str, tree: ast.AST, rng: random.Random) -> tuple[str, str]:
    lines = _lines(text)
    sites = [
        (b, k)
        for b, k in _inner_statements(tree)
        if len(b) > 1 and _whole_lines(lines, b[k]) and not isinstance(b[k], ast.Return)
    ]
    body, k = _pick(rng, sites, "deletable statement")
    start, end = _statement_lines(lines, body[k])
    del lines[start:end]
    return "".join(lines), f"delete line {start + 1}"


def _insert(text: str, tree: ast.AST, rng: random.Random) -> tuple[str, str]:
    """Copy a simple statement from one place to another (re-indented to fit there)."""
    lines = _lines(text)
    donors = [
        b[k]
        for b, k in _inner_statements(tree)
        if not isinstance(b[k], ast.For | ast.While | ast.If | ast.With | ast.Try)
    ]
    donor = _pick(rng, donors, "simple statement")
    body, k = _pick(
        rng,
        [s for s in _inner_statements(tree) if _whole_lines(lines, s[0][s[1]])],
        "place to insert",
    )
    target = body[k]
    indent = " " * target.col_offset
    code = [indent + line + "\n" for line in ast.unparse(donor).splitlines()]
    at = _statement_lines(lines, target)[0]
    lines[at:at] = code
    return "".join(lines), f"insert at line {at + 1}: {ast.unparse(donor)[:40]}"


_MUTATORS: dict[str, Callable[[str, ast.AST, random.Random], tuple[str, str]]] = {
    "constant": _constant,
    "operator": _operator,
    "swap_identifier": _swap_identifier,
    "rename": _rename,
    "duplicate": _duplicate,
    "delete": _delete,
    "insert": _insert,
    "loop_bound": _loop_bound,
}
