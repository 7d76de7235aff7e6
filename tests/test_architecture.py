"""The module map of docs/architecture.md, checked: import directions, no cycles, small modules.

A small AST walk over `elmjax/` builds the graph of imports between its modules (every import
statement, module level or inside a function: a lazy import is still a dependency) and checks:

- **directions**: each module belongs to a layer, and imports only from its own layer or the
  ones below it. Nothing imports the loop except the entry points (`cli -> loop`); the stages
  (`finetune`, `rl`) reach the evaluation step and `run_dir` but never the loop; `viz` reads run
  directories and never imports the loop or a stage;
- **no JAX where workers live**: `sandbox/` and the modules sandbox workers import
  (`sodarace/walker.py`, `envs/`) import no JAX-family package, directly or through another
  elmjax module;
- **no cycles** between modules (a package's `__init__` importing its own submodules is how
  packages work, and is not counted as an edge back);
- **size**: the target is no module over ~500 lines and no class over ~300; anything over is
  listed as a warning, and twice the target (a monolith again) fails.

The checker functions are tested on small synthetic graphs first, so a broken checker cannot
pass silently.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "elmjax"

#: Layers, lowest first; a module is in the layer of its longest matching prefix. A module may
#: import from its own layer and the layers below. Entry points (`elmjax.cli`, `elmjax.elm` and
#: every `*.cli` module) sit on top of everything. A module no prefix names (a new top-level
#: module such as a tracing or device helper) counts as domain until it is listed here.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("elmjax", "elmjax.faults", "elmjax.tracing")),
    (
        "domain",
        (
            "elmjax.sandbox",
            "elmjax.envs",
            "elmjax.sodarace",
            "elmjax.qd",
            "elmjax.lm",
            "elmjax.mutation",
            "elmjax.store",
        ),
    ),
    ("config", ("elmjax.config",)),  # the run config names domain types (terrain, physics)
    ("run", ("elmjax.run_dir", "elmjax.run_window")),
    ("evaluation", ("elmjax.evaluation",)),
    ("viz", ("elmjax.viz",)),
    ("stages", ("elmjax.loop", "elmjax.finetune", "elmjax.rl")),
    ("entry", ("elmjax.cli", "elmjax.elm")),
]
#: Within the stages layer, which stage may import which other (stage 3 may build on stage 2).
#: The loop is stage 1's driver: no stage imports it.
STAGE_IMPORTS = {("elmjax.rl", "elmjax.finetune")}
#: Modules that must import no JAX, not even through another elmjax module: sandbox workers
#: import them and must start fast and stay small under their memory limit.
NO_JAX = ("elmjax.sandbox", "elmjax.sodarace.walker", "elmjax.envs")
JAX_FAMILY = ("jax", "jaxlib", "flax", "optax", "chex", "orbax", "brax")
MODULE_LINES_TARGET = 500
CLASS_LINES_TARGET = 300
#: Over this many times the target, a module or class fails the test instead of warning.
HARD_FACTOR = 2
DOMAIN = 1  # the layer of modules no prefix names


# -- the graph ----------------------------------------------------------------------------------


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """(elmjax modules, top-level third-party packages) that the module at `path` imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    internal: set[str] = set()
    external: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # `from pkg import sub` imports the submodule when there is one, else pkg itself.
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            if target.split(".")[0] == "elmjax":
                while target not in known and "." in target:  # `import elmjax.qd.insert`
                    target = target.rpartition(".")[0]
                if target != name:
                    internal.add(target)
            else:
                external.add(target.split(".")[0])
    return internal, external


def import_graph(package: Path = PACKAGE) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    files = module_files(package)
    internal, external = {}, {}
    for name, path in files.items():
        internal[name], external[name] = imports_of(name, path, set(files))
    return internal, external


# -- the checks -------------------------------------------------------------------------------


def _matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_of(name: str) -> int:
    if name.rpartition(".")[2] == "cli" or name in ("elmjax.cli", "elmjax.elm"):
        return len(LAYERS) - 1
    best, rank = "", None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if _matches(name, prefix) and len(prefix) > len(best):
                best, rank = prefix, i
    return DOMAIN if rank is None else rank


STAGES = next(i for i, (title, _) in enumerate(LAYERS) if title == "stages")


def _stage(name: str) -> str | None:
    return next((p for p in LAYERS[STAGES][1] if _matches(name, p)), None)


def direction_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that goes up a layer, reaches the loop from outside it, or crosses between
    stages other than the allowed ones."""
    out = []
    for src in sorted(graph):
        for dst in sorted(graph[src]):
            s, d = layer_of(src), layer_of(dst)
            if d > s:
                out.append(f"{src} ({LAYERS[s][0]}) imports {dst} ({LAYERS[d][0]})")
            elif (
                s == d == STAGES
                and _stage(src) != _stage(dst)
                and (_stage(src), _stage(dst)) not in STAGE_IMPORTS
            ):
                out.append(f"stage {src} imports another stage's module {dst}")
    return out


def no_jax_violations(graph: dict[str, set[str]], external: dict[str, set[str]]) -> list[str]:
    """JAX reached from a module in `NO_JAX`, directly or through elmjax modules it imports."""
    out = []
    for start in sorted(m for m in graph if any(_matches(m, p) for p in NO_JAX)):
        seen, todo = {start}, [start]
        while todo:
            mod = todo.pop()
            for pkg in sorted(external.get(mod, set()) & set(JAX_FAMILY)):
                via = "" if mod == start else f" through {mod}"
                out.append(f"{start} imports {pkg}{via}")
            for dst in graph.get(mod, ()):
                if dst not in seen:
                    seen.add(dst)
                    todo.append(dst)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), ignoring the edges
    from a package's `__init__` to its own submodules."""

    def edges(mod: str) -> list[str]:
        return sorted(d for d in graph.get(mod, ()) if not d.startswith(mod + "."))

    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for mod in sorted(graph):
        if mod not in index:
            visit(mod)
    return found


def size_violations(files: dict[str, Path], factor: float = 1) -> list[str]:
    """Modules over `factor` x the module target and classes over `factor` x the class target."""
    out = []
    module_limit, class_limit = MODULE_LINES_TARGET * factor, CLASS_LINES_TARGET * factor
    for name, path in sorted(files.items()):
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > module_limit:
            out.append(f"{name}: {lines} lines (> {module_limit:g}); split it by job")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                size = node.end_lineno - node.lineno + 1
                if size > class_limit:
                    out.append(f"{name}.{node.name}: {size} lines (> {class_limit:g})")
    return out


# -- the checkers on synthetic graphs (each must be able to fail) ---------------------------


def test_checkers_catch_what_they_are_for():
    ok = {
        "elmjax.cli": set(),
        "elmjax.loop.run": {"elmjax.evaluation", "elmjax.viz.report", "elmjax.run_dir"},
        "elmjax.rl.train": {"elmjax.evaluation", "elmjax.finetune.data", "elmjax.lm.model"},
        "elmjax.finetune.data": {"elmjax.store", "elmjax.run_dir"},
        "elmjax.viz.report": {"elmjax.run_dir", "elmjax.evaluation"},
        "elmjax.evaluation": {"elmjax.run_dir", "elmjax.sandbox"},
        "elmjax.run_dir": {"elmjax.qd", "elmjax.config"},
        "elmjax.qd": set(),
        "elmjax.sandbox": {"elmjax.sandbox.pool"},
        "elmjax.sandbox.pool": set(),
    }
    assert direction_violations(ok) == []
    assert cycles(ok) == []
    for src, dst in [
        ("elmjax.viz.report", "elmjax.loop.run"),  # the old report -> elm cycle
        ("elmjax.rl.train", "elmjax.loop.generation"),  # a stage reaching into the loop
        ("elmjax.finetune.data", "elmjax.rl.train"),  # stage 2 must not need stage 3
        ("elmjax.run_dir", "elmjax.viz.report"),
        ("elmjax.qd", "elmjax.loop.cli"),
    ]:
        bad = {**ok, src: ok.get(src, set()) | {dst}}
        assert direction_violations(bad), (src, dst)
    cyclic = {**ok, "elmjax.qd": {"elmjax.run_dir"}}
    assert cycles(cyclic) == [["elmjax.qd", "elmjax.run_dir"]]
    assert no_jax_violations(ok, {"elmjax.qd": {"jax"}}) == []
    leaky = {**ok, "elmjax.sandbox.pool": {"elmjax.qd"}}
    found = no_jax_violations(leaky, {"elmjax.qd": {"jax"}})
    assert "elmjax.sandbox.pool imports jax through elmjax.qd" in found
    assert "elmjax.sandbox.pool imports flax" in no_jax_violations(
        ok, {"elmjax.sandbox.pool": {"flax"}}
    )


def test_import_walk_resolves_relative_lazy_and_submodule_imports(tmp_path):
    pkg = tmp_path / "elmjax"
    (pkg / "qd").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "qd" / "__init__.py").write_text("from .archive import insert\n")
    (pkg / "qd" / "archive.py").write_text("import jax.numpy as jnp\n")
    (pkg / "viz.py").write_text(
        "from elmjax import qd\n\ndef f():\n    from elmjax.qd.archive import insert\n"
    )
    graph, external = import_graph(pkg)
    assert graph["elmjax.qd"] == {"elmjax.qd.archive"}
    assert graph["elmjax.viz"] == {"elmjax.qd", "elmjax.qd.archive"}
    assert external["elmjax.qd.archive"] == {"jax"}


# -- the real code --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_imports_follow_the_allowed_directions(graph):
    assert direction_violations(graph[0]) == []


def test_no_import_cycles(graph):
    assert cycles(graph[0]) == []


def test_sandbox_and_walker_import_no_jax(graph):
    assert no_jax_violations(*graph) == []


def test_sizes_checker_counts_module_and_class_lines(tmp_path):
    pkg = tmp_path / "elmjax"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    body = "\n".join(f"    x{i} = {i}" for i in range(CLASS_LINES_TARGET))
    filler = "y = 0\n" * (2 * MODULE_LINES_TARGET - CLASS_LINES_TARGET)  # module: 2x target + 1
    (pkg / "big.py").write_text(f"class Big:\n{body}\n" + filler)
    found = size_violations(module_files(pkg))
    assert found == [
        f"elmjax.big: {MODULE_LINES_TARGET * 2 + 1} lines (> {MODULE_LINES_TARGET}); split it by job",
        f"elmjax.big.Big: {CLASS_LINES_TARGET + 1} lines (> {CLASS_LINES_TARGET})",
    ]
    assert size_violations(module_files(pkg), factor=HARD_FACTOR) == [
        f"elmjax.big: {MODULE_LINES_TARGET * 2 + 1} lines (> {MODULE_LINES_TARGET * 2})"
        "; split it by job"
    ]


def test_modules_and_classes_stay_small():
    """Over the target: a warning naming the module, so its owner splits it by job. Over twice
    the target: a failure (the loop was 1,170 lines in one module before it was split)."""
    files = module_files()
    for over in size_violations(files):
        warnings.warn(f"over the size target: {over}", stacklevel=1)
    assert size_violations(files, factor=HARD_FACTOR) == []


def test_nothing_but_the_entry_points_imports_the_loop(graph):
    importers = {
        src
        for src, dsts in graph[0].items()
        for dst in dsts
        if _matches(dst, "elmjax.loop") and not _matches(src, "elmjax.loop")
    }
    assert importers <= {"elmjax.elm", "elmjax.cli"}, importers


def test_rl_scores_through_the_shared_evaluation_step_never_the_loop(graph):
    """Stage 3 reaches the sandbox and simulator through `elmjax.evaluation` (no second code
    path) and run directories through `run_dir`; it never imports the ELM loop."""
    internal = graph[0]
    rl = {name: deps for name, deps in internal.items() if name.startswith("elmjax.rl")}
    assert rl, "elmjax.rl is missing"
    reached = set().union(*rl.values())
    assert "elmjax.evaluation" in reached and "elmjax.run_dir" in reached
    assert not any(d.startswith("elmjax.loop") or d == "elmjax.elm" for d in reached)
    assert not any(d.startswith("elmjax.sandbox") for d in reached), "sandbox only via evaluation"
    # and the loop and stage 2 never import stage 3
    for name, deps in internal.items():
        if name.startswith(("elmjax.loop", "elmjax.finetune")):
            assert not any(d.startswith("elmjax.rl") for d in deps), name
