"""What a sandboxed program may say: the AST policy (what it may touch is in `world.py`).

This is the first of several walls (the OS layers of `isolation.py`, the program's own process
and a caller that validates every reply are the others), so it errs towards refusing: walker
programs need arithmetic, loops, functions, small classes and a few pure modules, nothing else.
The rules:

- imports only of `ALLOWED_MODULES` (the program gets private copies: `world.py`);
- no attribute whose name starts with `__` (except `__init__`, `__name__`), and none of the
  frame/code attributes (`gi_frame`, `f_globals`, ...) that lead back to real builtins;
- no names that reach outside (`open`, `exec`, `eval`, `compile`, `getattr`, `type`, ...);
  they are also absent from the program's builtins, so a name built at run time finds nothing;
- the same rule for names a construct binds (`except ... as`, match captures, arguments,
  aliases) and for attributes a `case C(name=...)` pattern reads; no class keywords;
- `x.format` / `x.format_map` are rewritten (`rewrite_tree`) to a hook that applies the
  attribute rule to the fields of the format string, which is data built at run time;
- dunder methods may be defined only from an allow-list of ordinary ones (`__init__`, `__str__`,
  comparisons, arithmetic); never `__del__` (it would run later, inside another program) or the
  pickle hooks.

Text that provably cannot break a rule nor need the rewrite (`needs_tree_check` is False: short,
ASCII, no `__`, none of the suspicious words) is compiled without building a syntax tree, which
is most of the policy's cost.
"""

from __future__ import annotations

import ast
import string
from collections.abc import Callable
from typing import Any

#: Modules a program may import: pure computation, no I/O, no introspection.
ALLOWED_MODULES: frozenset[str] = frozenset(
    {"math", "random", "itertools", "functools", "collections"}
)

#: Names a program may not mention at all: each reaches outside the program (files, code from
#: strings, attribute access by string, the interpreter's namespaces, classes built at run time).
#: None of them is in the program's builtins either, so a program that gets one past this rule
#: finds nothing. Other builtins that are merely absent (`id`, `dir`, `input`, `exit`,
#: `BaseException`, ...) stay ordinary identifiers: a program may name its own variable `dir`.
FORBIDDEN_NAMES: frozenset[str] = frozenset(
    {
        "open", "exec", "eval", "compile", "__import__", "getattr", "setattr", "delattr",
        "globals", "locals", "vars", "breakpoint", "memoryview", "type", "__builtins__",
        "__loader__", "__spec__", "__build_class__",
    }
)  # fmt: skip

#: Dunder attributes that are harmless to read or call.
ALLOWED_DUNDER_ATTRIBUTES: frozenset[str] = frozenset({"__init__", "__name__"})

#: Attributes that expose frames, code or globals without a leading underscore.
FORBIDDEN_ATTRIBUTES: frozenset[str] = frozenset(
    {
        "gi_frame", "gi_code", "gi_yieldfrom", "cr_frame", "cr_code", "cr_await", "cr_origin",
        "ag_frame", "ag_code", "ag_await", "f_globals", "f_locals", "f_builtins", "f_back",
        "f_code", "f_trace", "tb_frame", "tb_next", "func_globals", "func_code", "mro",
    }
)  # fmt: skip

#: Dunder methods a program's class may define.
ALLOWED_DUNDER_METHODS: frozenset[str] = frozenset(
    {
        "__init__", "__repr__", "__str__", "__len__", "__iter__", "__next__", "__getitem__",
        "__setitem__", "__contains__", "__eq__", "__ne__", "__lt__", "__le__", "__gt__",
        "__ge__", "__hash__", "__bool__", "__call__", "__neg__", "__pos__", "__abs__",
        *(
            f"__{p}{op}__"
            for op in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul")
            for p in ("", "r", "i")
        ),
    }
)  # fmt: skip

#: Most AST nodes a program may have (compiling is done under the CPU limit anyway; this keeps
#: a pathological text from spending that budget in the compiler).
MAX_AST_NODES = 50_000


class PolicyError(Exception):
    """The program breaks the AST policy; the message says where and how."""


#: Every rule of `check_tree` is about an identifier: a forbidden name or attribute, a name with
#: a leading `__`, a `metaclass=` keyword, or an import (which the program's `__import__` also
#: enforces when it runs). In ASCII text every identifier appears literally (non-ASCII text could
#: spell one through NFKC normalisation), so ASCII text that matches none of these words cannot
#: break a rule and needs no syntax tree: `compile` on the text is enough. Seed-like programs take
#: this path; anything suspicious, even in a comment, gets the full check.
_SUSPICIOUS_WORDS = frozenset(
    {n for n in FORBIDDEN_NAMES | FORBIDDEN_ATTRIBUTES if not n.startswith("_")}
    | {"class", "format", "format_map"}  # class keywords; the format rewrite (`rewrite_tree`)
)
#: A syntax node takes at least a quarter of a character (`-1` is four nodes: an expression
#: statement, a unary operation, its operator and a constant), so text of at most this many
#: characters cannot exceed MAX_AST_NODES and may skip the count.
FAST_PATH_MAX_CHARS = MAX_AST_NODES // 4


#: Every byte that cannot be part of a suspicious word becomes a space (digits too: no
#: suspicious word holds one, so a word glued to digits, `1open`, still stands alone).
_WORD_BYTES = frozenset((string.ascii_letters + "_").encode())
_SEPARATE_WORDS = bytes(c if c in _WORD_BYTES else 0x20 for c in range(256))
_SUSPICIOUS_BYTES = frozenset(w.encode() for w in _SUSPICIOUS_WORDS)


def needs_tree_check(source: str) -> bool:
    """False when `source` provably satisfies every `check_tree` rule and needs no rewrite
    (see `_SUSPICIOUS_WORDS`); the fast path then compiles the text as it is.

    The words are found with `bytes.translate` + `split` rather than a regular expression
    (a third of the time, and this runs for every program): the pieces are the text's runs of
    letters and underscores, so every identifier that is a suspicious word is one of them
    (a longer identifier may split into more pieces, which can only make the text suspicious,
    never clear it)."""
    return (
        len(source) > FAST_PATH_MAX_CHARS
        or not source.isascii()
        or "__" in source
        or not _SUSPICIOUS_BYTES.isdisjoint(source.encode().translate(_SEPARATE_WORDS).split())
    )


def check_tree(tree: ast.AST) -> None:
    """Raise PolicyError for the first construct the policy forbids.

    A hand-rolled depth-first walk with per-node-type checks: about twice as fast as `ast.walk`
    with an isinstance chain, and this runs for every program the language model writes.
    """
    stack = [tree]
    count = 0
    checks = _CHECKS
    node_type = ast.AST
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_AST_NODES:
            raise PolicyError(f"program has more than {MAX_AST_NODES} syntax nodes")
        check = checks.get(type(node))
        if check is not None:
            problem = check(node)
            if problem:
                line = getattr(node, "lineno", None)
                raise PolicyError(f"line {line}: {problem}" if line else problem)
        for field in node._fields:
            if field == "ctx":
                continue
            value = getattr(node, field, None)
            if type(value) is list:
                stack.extend(v for v in value if isinstance(v, node_type))
            elif isinstance(value, node_type):
                stack.append(value)


def _check_import(node: ast.Import) -> str | None:
    for alias in node.names:
        if alias.name not in ALLOWED_MODULES:
            return f"import of {alias.name!r} is not allowed ({allowed_text()})"
    return None


def _check_import_from(node: ast.ImportFrom) -> str | None:
    if node.level or node.module not in ALLOWED_MODULES:
        return f"import from {node.module or '.'!r} is not allowed ({allowed_text()})"
    for alias in node.names:
        if alias.name.startswith("_"):
            return f"import of private name {alias.name!r}"
    return None


def _check_name(node: ast.Name) -> str | None:
    name = node.id
    if name in FORBIDDEN_NAMES or (
        name.startswith("__") and not (name == "__name__" and type(node.ctx) is ast.Load)
    ):
        return f"name {name!r} is not allowed"
    return None


def _check_attribute(node: ast.Attribute) -> str | None:
    return attribute_problem(node.attr)


def _check_function(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    if node.name in FORBIDDEN_NAMES or (
        node.name.startswith("__") and node.name not in ALLOWED_DUNDER_METHODS
    ):
        return f"defining {node.name!r} is not allowed"
    return None


def _check_class(node: ast.ClassDef) -> str | None:
    if node.keywords:
        return "class keywords (metaclass=...) are not allowed"
    return _dunder("class name", node.name)


def _dunder(what: str, name: str | None) -> str | None:
    """A name a construct binds (an argument, an `except ... as`, a match capture, ...):
    the same rule as a name the program mentions."""
    if name is not None and (name.startswith("__") or name in FORBIDDEN_NAMES):
        return f"{what} {name!r} is not allowed"
    return None


def attribute_problem(name: str) -> str | None:
    if name in FORBIDDEN_ATTRIBUTES or (
        name.startswith("__") and name not in ALLOWED_DUNDER_ATTRIBUTES
    ):
        return f"attribute {name!r} is not allowed"
    return None


def _check_match_class(node: ast.MatchClass) -> str | None:
    """`case C(name=x)` reads attribute `name` of the subject: the attribute rule applies."""
    for name in node.kwd_attrs:
        problem = attribute_problem(name)
        if problem:
            return problem
    return None


_CHECKS: dict[type, Callable[[Any], str | None]] = {
    ast.Import: _check_import,
    ast.ImportFrom: _check_import_from,
    ast.Name: _check_name,
    ast.Attribute: _check_attribute,
    ast.FunctionDef: _check_function,
    ast.AsyncFunctionDef: _check_function,
    ast.ClassDef: _check_class,
    ast.Global: lambda n: next(filter(None, (_dunder("name", x) for x in n.names)), None),
    ast.Nonlocal: lambda n: next(filter(None, (_dunder("name", x) for x in n.names)), None),
    ast.ExceptHandler: lambda n: _dunder("name", n.name),
    ast.MatchClass: _check_match_class,
    ast.arg: lambda n: _dunder("argument name", n.arg),
    ast.keyword: lambda n: _dunder("keyword", n.arg),
    ast.alias: lambda n: _dunder("alias", n.asname),
    ast.MatchAs: lambda n: _dunder("name", n.name),
    ast.MatchStar: lambda n: _dunder("name", n.name),
    ast.MatchMapping: lambda n: _dunder("name", n.rest),
}


def allowed_text() -> str:
    return "allowed: " + ", ".join(sorted(ALLOWED_MODULES))


# ---- the str.format rewrite -------------------------------------------------------------------

#: The name a rewritten program calls for `x.format` / `x.format_map` (see `rewrite_tree`);
#: a program cannot name it itself (it starts with `__`).
FORMAT_HOOK = "__sandbox_format__"


class _FormatRewriter(ast.NodeTransformer):
    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        self.generic_visit(node)
        if node.attr in ("format", "format_map") and type(node.ctx) is ast.Load:
            call = ast.Call(
                func=ast.Name(FORMAT_HOOK, ast.Load()),
                args=[node.value, ast.Constant(node.attr)],
                keywords=[],
            )
            return ast.copy_location(call, node)
        return node


def rewrite_tree(tree: ast.Module) -> ast.Module:
    """After `check_tree`: every `x.format` / `x.format_map` read goes through FORMAT_HOOK."""
    return ast.fix_missing_locations(_FormatRewriter().visit(tree))
