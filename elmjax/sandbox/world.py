"""The program's world: its builtins, its private copies of the allowed modules, its `random`
and the safe `str.format` that rewritten programs call (the AST rules are in `policy.py`).

Each program gets its own copy of every allowed module (Python functions as fresh wrappers
whose globals hold nothing, Python classes as fresh subclasses, filled lazily), so a program
that assigns `math.pi = 3` or `walker_creator.x = 1` changes nothing the next program sees; and
builtins without anything that reaches outside.
"""

from __future__ import annotations

import _string
import builtins
import collections
import functools
import itertools
import math
import random
import string
import types
from collections.abc import Callable
from typing import Any

from elmjax.sandbox.policy import ALLOWED_MODULES, FORMAT_HOOK, allowed_text, attribute_problem

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


class ForbiddenImport(ImportError):
    """Raised by a program's `import` of a module outside ALLOWED_MODULES (kind `forbidden`)."""


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


# ---- str.format / str.format_map -------------------------------------------------------------


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
                problem = attribute_problem(key)
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
            message = f"import of {name!r} is not allowed ({allowed_text()})"
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
