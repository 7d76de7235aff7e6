"""What a sandboxed program may say and touch: the AST policy, its builtins and its modules.

This is the first of several walls (the worker's resource limits, unprivileged user and
plain-data results are the others), so it errs towards refusing: walker programs need arithmetic,
loops, functions, small classes and a few pure modules, nothing else. The rules:

- imports only of `ALLOWED_MODULES`; each program gets its own copy of them (their Python
  classes as fresh subclasses, their Python functions, and injected ones such as
  `walker_creator`, as fresh wrappers), so a program that assigns `math.pi = 3` or
  `walker_creator.x = 1` cannot change what the next program in the same worker sees;
- no attribute whose name starts with `__` (except `__init__`, `__name__`), and none of the
  frame/code attributes (`gi_frame`, `f_globals`, ...) that lead back to real builtins;
- no names that reach outside (`open`, `exec`, `eval`, `compile`, `getattr`, `type`, ...);
  they are also absent from the program's builtins, so a name built at run time finds nothing;
- dunder methods may be defined only from an allow-list of ordinary ones (`__init__`, `__str__`,
  comparisons, arithmetic); never `__del__` (it would run later, inside another program) or the
  pickle hooks.

Text that provably cannot break a rule (`needs_tree_check` is False) is compiled without building
a syntax tree, which is most of the policy's cost.
"""

from __future__ import annotations

import _string
import ast
import builtins
import collections
import functools
import itertools
import math
import random
import re
import string
import types
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

_SAFE_BUILTIN_NAMES = (
    "abs", "all", "any", "ascii", "bin", "bool", "bytearray", "bytes", "callable", "chr",
    "classmethod", "complex", "dict", "divmod", "enumerate", "filter", "float", "format",
    "frozenset", "hash", "hex", "int", "isinstance", "issubclass", "iter", "len", "list", "map",
    "max", "min", "next", "object", "oct", "ord", "pow", "property", "range", "repr", "reversed",
    "round", "set", "slice", "sorted", "staticmethod", "str", "sum", "super", "tuple", "zip",
    "True", "False", "None", "NotImplemented", "Ellipsis", "Exception", "ArithmeticError",
    "AssertionError", "AttributeError", "IndexError", "KeyError", "LookupError", "NameError",
    "NotImplementedError", "OverflowError", "RecursionError", "RuntimeError", "StopIteration",
    "TypeError", "ValueError", "ZeroDivisionError", "MemoryError",
)  # fmt: skip
_SAFE_BUILTINS: dict[str, Any] = {name: getattr(builtins, name) for name in _SAFE_BUILTIN_NAMES}


class PolicyError(Exception):
    """The program breaks the AST policy; the message says where and how."""


class ForbiddenImport(ImportError):
    """Raised by a program's `import` of a module outside ALLOWED_MODULES (kind `forbidden`)."""


#: Every rule of `check_tree` is about an identifier: a forbidden name or attribute, a name with
#: a leading `__`, a `metaclass=` keyword, or an import (which the program's `__import__` also
#: enforces when it runs). In ASCII text every identifier appears literally (non-ASCII text could
#: spell one through NFKC normalisation), so ASCII text that matches none of these words cannot
#: break a rule and needs no syntax tree: `compile` on the text is enough. Seed-like programs take
#: this path; anything suspicious, even in a comment, gets the full check.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SUSPICIOUS_WORDS = frozenset(
    {n for n in FORBIDDEN_NAMES | FORBIDDEN_ATTRIBUTES if not n.startswith("_")}
    | {"class", "format", "format_map"}  # class keywords; the format rewrite (`rewrite_tree`)
)
#: A syntax node takes at least a quarter of a character (`-1` is four nodes: an expression
#: statement, a unary operation, its operator and a constant), so text of at most this many
#: characters cannot exceed MAX_AST_NODES and may skip the count.
FAST_PATH_MAX_CHARS = MAX_AST_NODES // 4


def needs_tree_check(source: str) -> bool:
    """False when `source` provably satisfies every `check_tree` rule and needs no rewrite
    (see `_SUSPICIOUS_WORDS`); the fast path then compiles the text as it is."""
    return (
        len(source) > FAST_PATH_MAX_CHARS
        or not source.isascii()
        or "__" in source
        or not _SUSPICIOUS_WORDS.isdisjoint(_IDENTIFIER.findall(source))
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
            return f"import of {alias.name!r} is not allowed ({_allowed()})"
    return None


def _check_import_from(node: ast.ImportFrom) -> str | None:
    if node.level or node.module not in ALLOWED_MODULES:
        return f"import from {node.module or '.'!r} is not allowed ({_allowed()})"
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
    return _attribute_name(node.attr)


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


def _attribute_name(name: str) -> str | None:
    if name in FORBIDDEN_ATTRIBUTES or (
        name.startswith("__") and name not in ALLOWED_DUNDER_ATTRIBUTES
    ):
        return f"attribute {name!r} is not allowed"
    return None


def _check_match_class(node: ast.MatchClass) -> str | None:
    """`case C(name=x)` reads attribute `name` of the subject: the attribute rule applies."""
    for name in node.kwd_attrs:
        problem = _attribute_name(name)
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


def _allowed() -> str:
    return "allowed: " + ", ".join(sorted(ALLOWED_MODULES))


# ---- the program's world: builtins and private module copies -------------------------------------

_IMMUTABLE_TYPE = 1 << 8  # Py_TPFLAGS_IMMUTABLETYPE: C types whose attributes cannot be set


#: Builds the wrappers that stand in for injected and module functions. Compiled with globals
#: that hold nothing (no builtins, no modules), so a wrapper's `__globals__` leads nowhere.
_WRAPPER_GLOBALS: dict[str, Any] = {"__builtins__": {}}
exec(
    compile(
        "def wrap(function):\n"
        "    def call(*args, **kwargs):\n"
        "        return function(*args, **kwargs)\n"
        "    return call\n",
        "<sandbox>",
        "exec",
    ),
    _WRAPPER_GLOBALS,
)
_wrap: Callable[[Callable[..., Any]], Callable[..., Any]] = _WRAPPER_GLOBALS.pop("wrap")


def _private(value: Any) -> Any:
    """What a program could modify, made its own, so its assignments stay with it: a Python
    function (whose attributes can be set) becomes a fresh wrapper that keeps the original out
    of reach, a Python-level class becomes a fresh subclass."""
    if isinstance(value, types.FunctionType):
        call = _wrap(value)
        call.__name__, call.__qualname__ = value.__name__, value.__qualname__
        call.__doc__ = value.__doc__
        return call
    if isinstance(value, type) and not value.__flags__ & _IMMUTABLE_TYPE:
        return types.new_class(value.__name__, (value,))
    return value


#: Per module, public names a program does not get: `functools` helpers that read, write or
#: evaluate attributes named by strings (`update_wrapper`/`wraps` with `assigned=`/`updated=`,
#: `cached_property.attrname`, `singledispatch` evaluating string annotations) and
#: `partialmethod`/`singledispatchmethod`, descriptors built on the same machinery.
WITHHELD: dict[str, frozenset[str]] = {
    "functools": frozenset(
        {
            "update_wrapper", "wraps", "WRAPPER_ASSIGNMENTS", "WRAPPER_UPDATES",
            "cached_property", "singledispatch", "singledispatchmethod", "partialmethod",
        }
    ),
}  # fmt: skip


_PUBLIC: dict[str, frozenset[str]] = {}


def _public_names(module: types.ModuleType) -> frozenset[str]:
    """What a program may take from `module` (computed once per process)."""
    if module.__name__ not in _PUBLIC:
        withheld = WITHHELD.get(module.__name__, frozenset())
        _PUBLIC[module.__name__] = frozenset(
            name
            for name in getattr(module, "__all__", None) or dir(module)
            if not name.startswith("_")
            and name not in withheld
            and getattr(module, name, None) is not None
            and not isinstance(getattr(module, name), types.ModuleType)
        )
    return _PUBLIC[module.__name__]


def _module_copy(module: types.ModuleType) -> types.ModuleType:
    """A program's own copy of `module`. Each name is made private (`_private`) the first time
    the program reads it (a module `__getattr__`), so a program pays only for what it uses."""
    copy = types.ModuleType(module.__name__)
    public = _public_names(module)

    def lookup(name: str) -> Any:
        if name not in public:
            raise AttributeError(f"module {module.__name__!r} has no attribute {name!r}")
        value = _private(getattr(module, name))
        setattr(copy, name, value)
        return value

    copy.__getattr__ = _private(lookup)  # type: ignore[method-assign]
    copy.__all__ = sorted(public)
    return copy


def _random_module(seed: int) -> types.ModuleType:
    """`random` for one program: its whole public API (`random.__all__`), the module-level
    functions bound to a generator seeded with `seed`. `random.seed()` without an argument, and
    `random.Random()` without one, start from `seed` (the n-th such generator from a seed
    derived from it) instead of the OS entropy pool, so the program stays deterministic."""
    rng = random.Random(seed)
    module = types.ModuleType("random")
    made = [0]

    class Random(random.Random):
        def __init__(self, x: Any = None) -> None:
            if x is None:
                made[0] += 1
                x = f"{seed}/{made[0]}"
            super().__init__(x)

    for name in random.__all__:
        if name not in ("Random", "SystemRandom") and hasattr(rng, name):
            setattr(module, name, getattr(rng, name))
    module.Random = Random

    def lookup(name: str) -> Any:
        if name != "SystemRandom":
            raise AttributeError(f"module 'random' has no attribute {name!r}")
        module.SystemRandom = types.new_class("SystemRandom", (random.SystemRandom,))
        return module.SystemRandom

    module.__getattr__ = _private(lookup)  # type: ignore[method-assign]
    module.__all__ = list(random.__all__)

    def seed_(a: Any = None, version: int = 2) -> None:
        rng.seed(seed if a is None else a, version)

    module.seed = _private(seed_)
    return module


# ---- str.format / str.format_map ---------------------------------------------------------------

#: The name a rewritten program calls for `x.format` / `x.format_map` (see `rewrite_tree`);
#: a program cannot name it itself (it starts with `__`).
FORMAT_HOOK = "__sandbox_format__"


class ForbiddenAccess(Exception):
    """A format string that reaches an attribute the AST policy forbids (kind `forbidden`)."""


class _SafeFormatter(string.Formatter):
    """`str.format` with the AST policy's attribute rule applied to `{0.attr}` fields: a format
    string is data built at run time, and would otherwise read any attribute chain."""

    def __init__(self, violations: list[str] | None) -> None:
        self.violations = violations

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> tuple[Any, Any]:
        first, rest = _string.formatter_field_name_split(field_name)
        obj = self.get_value(first, args, kwargs)
        for is_attribute, key in rest:
            if is_attribute:
                problem = _attribute_name(key)
                if problem:
                    message = f"format string: {problem}"
                    if self.violations is not None:
                        self.violations.append(message)
                    raise ForbiddenAccess(message)
                obj = getattr(obj, key)
            else:
                obj = obj[key]
        return obj, first


def _format_hook(violations: list[str] | None) -> Callable[[Any, str], Any]:
    formatter = _SafeFormatter(violations)

    def safe_format(text: str, *args: Any, **kwargs: Any) -> str:
        return formatter.vformat(text, args, kwargs)

    def safe_format_map(text: str, mapping: Any) -> str:
        return formatter.vformat(text, (), mapping)

    safe = {"format": safe_format, "format_map": safe_format_map}
    unbound = {"format": str.format, "format_map": str.format_map}

    def attribute(obj: Any, name: str) -> Any:
        """`obj.format` / `obj.format_map` as the program wrote it, except that str's own
        methods (bound or not, reached through a subclass or `super()` too) format safely."""
        value = getattr(obj, name)
        if value is unbound[name]:
            return safe[name]
        if (
            type(value) is types.BuiltinMethodType
            and isinstance(value.__self__, str)
            and getattr(type(value.__self__), name, None) is unbound[name]
        ):
            text = str.__str__(value.__self__)
            return functools.partial(safe[name], text)
        return value

    return attribute


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


_MODULES: dict[str, types.ModuleType] = {
    "math": math,
    "itertools": itertools,
    "functools": functools,
    "collections": collections,
}


def program_globals(
    seed: int,
    inject: dict[str, Any],
    print_sink: Callable[..., None],
    violations: list[str] | None = None,
) -> dict[str, Any]:
    """Fresh globals for one program: restricted builtins, an import that hands out private
    copies of the allowed modules (`random` seeded with `seed`), and the injected names.
    A refused import is also appended to `violations`, so a program that catches the
    ImportError is still reported `forbidden`."""
    imported: dict[str, types.ModuleType] = {}

    def import_(name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level=0):
        if level or name not in ALLOWED_MODULES:
            message = f"import of {name!r} is not allowed ({_allowed()})"
            if violations is not None:
                violations.append(message)
            raise ForbiddenImport(message)
        if name not in imported:
            imported[name] = (
                _random_module(seed) if name == "random" else _module_copy(_MODULES[name])
            )
        return imported[name]

    safe = dict(_SAFE_BUILTINS)
    safe["__import__"] = _private(import_)
    safe["__build_class__"] = builtins.__build_class__
    safe["print"] = _private(print_sink)
    namespace: dict[str, Any] = {
        "__builtins__": safe,
        "__name__": "__program__",
        FORMAT_HOOK: _private(_format_hook(violations)),
    }
    namespace.update({name: _private(value) for name, value in inject.items()})
    return namespace
