"""The training corpus of elm-tiny: GP lineages of the Sodarace seeds, rendered as ELM diffs.

The published ELM diff models learned from GitHub commits. elmjax ships a model that must be
trained in under an hour on a laptop CPU, from data made here, so its "commits" are genetic-
programming edits: starting from each seed, several generations of GP mutation (`gp.mutate_n`),
keeping only children that are valid walkers. Each kept (parent, child) pair becomes one example
in the paper's format (`diff_format.diff_example`), with a commit message that says what kind of
edit it was (parameter edits get "Changed parameters ...", one-token edits "Small change ...",
statement edits "Changed make_walker function."), so the paper's three prompt messages steer the
model towards those kinds of edits.

Whole lineages are held out (by default `cppn_mutable` and `runner`) to measure how the model
does on programs it never saw; for the seeds it trained on, `eval_parents` draws descendants from
a separate random stream whose programs are excluded from the training set.

A model trained on this corpus starts as an imitation of GP. The paper's step that goes beyond
it -- fine-tuning on the diffs that entered the archive -- uses the run's program store.
"""

from __future__ import annotations

import ast
import hashlib
import random
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from elmjax.mutation import gp
from elmjax.mutation.diff_format import (
    MESSAGES,
    DiffExample,
    DiffFormat,
    diff_example,
    normalize_program,
)

#: Lineages never used for training: `cppn_mutable` is the operator benchmark's unseen lineage;
#: `wheel`, `galloper` and `runner` are stage 2's out-of-distribution completions. Nothing of
#: theirs (seed or descendant) may be in any training set (tests/test_heldout_data.py).
HELD_OUT: tuple[str, ...] = ("cppn_mutable", "wheel", "galloper", "runner")

MSG_CHANGED, MSG_PARAMETERS, MSG_SMALL = (m for m, _ in MESSAGES)


def message_for(kind: str) -> str:
    """The paper's commit message that best describes a GP edit of `kind` ('+'-joined)."""
    kinds = set(kind.split("+"))
    if kinds <= {"constant", "loop_bound"}:
        return MSG_PARAMETERS
    if kinds <= {"constant", "loop_bound", "operator", "swap_identifier", "rename"}:
        return MSG_SMALL
    return MSG_CHANGED


@dataclass(frozen=True)
class Edit:
    """One kept GP edit: a lineage's parent and its valid child."""

    seed: str
    generation: int
    parent: str
    child: str
    kind: str
    detail: str

    def example(self, fmt: DiffFormat | None = None) -> DiffExample:
        if fmt is None:
            return diff_example(self.parent, self.child, message_for(self.kind))
        return fmt.example(self.parent, self.child, message_for(self.kind))


def program_key(text: str) -> str:
    """Identity of a program for overlap checks: a hash of its syntax tree (`ast.dump`), so
    a reformatted or re-commented copy of a held-out program is still the same program; the
    normalised text for text that does not parse."""
    try:
        key = ast.dump(ast.parse(text))
    except (SyntaxError, ValueError):
        key = normalize_program(text)
    return hashlib.sha256(key.encode()).hexdigest()[:20]


Validator = Callable[[Sequence[str]], list[bool]]


def exec_validator(sources: Sequence[str], seconds: float = 2.0) -> list[bool]:
    """Valid-walker check by in-process `exec`, for *trusted* text only: GP descendants of our
    own seeds while building the corpus (no `while`, no imports beyond math). LM output goes
    through `sandbox_validator` instead."""
    from elmjax.sodarace.walker import check_walker, walker_creator

    def alarm(signum, frame):
        raise TimeoutError

    out = []
    old = signal.signal(signal.SIGALRM, alarm)
    try:
        for source in sources:
            signal.setitimer(signal.ITIMER_REAL, seconds)
            try:
                scope = {"walker_creator": walker_creator, "__name__": "walker"}
                exec(compile(source, "walker.py", "exec"), scope)
                check_walker(scope["make_walker"]())
                out.append(True)
            except Exception:
                out.append(False)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, old)
    return out


def sandbox_validator(sources: Sequence[str]) -> list[bool]:
    """Valid-walker check through the sandbox (untrusted text)."""
    from elmjax.sandbox import run_programs
    from elmjax.sodarace.walker import check_walker

    results = run_programs(
        list(sources),
        "make_walker",
        check_walker,
        inject={"walker_creator": "elmjax.sodarace.walker:walker_creator"},
    )
    return [r.ok for r in results]


def lineage(
    seed_name: str,
    seed_text: str,
    rng: random.Random,
    generations: int,
    children_per_generation: int,
    validate: Validator,
    pool_size: int = 64,
) -> list[Edit]:
    """Kept edits of a GP lineage: each generation mutates parents drawn from the pool (the seed
    and earlier valid children), 1-3 GP steps per child, and keeps the valid, new children."""
    seed_text = normalize_program(seed_text)
    pool = [seed_text]
    seen = {seed_text}
    edits: list[Edit] = []
    for generation in range(generations):
        drafts = []
        for _ in range(children_per_generation):
            parent = seed_text if rng.random() < 0.25 else rng.choice(pool)
            steps = rng.choice((1, 1, 1, 2, 3))
            try:
                m = gp.mutate_n(parent, rng, steps)
            except (gp.GPError, SyntaxError):
                continue
            child = normalize_program(m.text)
            if child in seen:
                continue
            seen.add(child)
            drafts.append((parent, child, m))
        ok = validate([c for _, c, _ in drafts])
        for (parent, child, m), good in zip(drafts, ok):
            if good:
                edits.append(Edit(seed_name, generation, parent, child, m.kind, m.detail))
                pool.append(child)
        if len(pool) > pool_size:
            pool = [seed_text] + rng.sample(pool[1:], pool_size - 1)
    return edits


def build_corpus(
    seeds: dict[str, str],
    seed: int = 0,
    generations: int = 6,
    children_per_generation: int = 120,
    held_out: Sequence[str] = HELD_OUT,
    validate: Validator = exec_validator,
    exclude: set[str] = frozenset(),
) -> dict[str, list[Edit]]:
    """Edits per lineage: {'train': [...], 'held_out': [...]} (held-out lineages' edits are for
    evaluation only). Edits whose parent or child has a `program_key` in `exclude` (the frozen
    evaluation parents) are dropped from 'train'."""
    out: dict[str, list[Edit]] = {"train": [], "held_out": []}
    for k, (name, text) in enumerate(sorted(seeds.items())):
        rng = random.Random(seed * 1000 + k)
        edits = lineage(name, text, rng, generations, children_per_generation, validate)
        if name in held_out:
            out["held_out"].extend(edits)
            continue
        out["train"].extend(
            e for e in edits if not {program_key(e.parent), program_key(e.child)} & exclude
        )
    return out


# ---- random bodies ---------------------------------------------------------------------------------
#
# The seeds are seven programs; a model that only ever sees their descendants learns their text,
# not how to edit a walker program. Random bodies, written as programs in a few plain styles
# (explicit joints and muscles, or tables and a loop), add shapes and code the seeds do not have.
# The styles are deliberately not those of the held-out seeds (no wheel or rim loops, no CPPN).


def _random_body(rng: random.Random) -> tuple[list[tuple[float, float]], list[tuple]]:
    """Joints (x, y) on a jittered grid and a connected set of connections: a random spanning
    tree plus extra edges between near joints; each connection is a bone or a muscle."""
    n = rng.randint(3, 12)
    cols = rng.randint(2, 4)
    step = rng.choice((2.0, 3.0, 4.0, 5.0, 6.0))
    joints = []
    for k in range(n):
        x = (k % cols) * step + round(rng.uniform(-0.4, 0.4) * step, 1)
        y = (k // cols) * step + round(rng.uniform(-0.4, 0.4) * step, 1)
        joints.append((round(x, 1), round(max(y, 0.0), 1)))
    edges = set()
    for k in range(1, n):
        near = sorted(range(k), key=lambda j: (joints[j][0] - joints[k][0]) ** 2
                      + (joints[j][1] - joints[k][1]) ** 2)[:3]  # fmt: skip
        edges.add((rng.choice(near), k))
    for _ in range(rng.randint(0, n)):
        a, b = rng.sample(range(n), 2)
        edges.add((min(a, b), max(a, b)))
    muscles = []
    for a, b in sorted(edges):
        if rng.random() < 0.45:
            muscles.append((a, b))
        else:
            amplitude = rng.choice((2.0, 3.0, 5.0, 8.0, 10.0, round(rng.uniform(1, 12), 2)))
            muscles.append((a, b, amplitude, round(rng.random(), 2)))
    return joints, muscles


def random_body_program(rng: random.Random) -> str:
    """A walker program that builds a random connected body, in one of three styles."""
    joints, muscles = _random_body(rng)
    style = rng.randrange(3)
    if style == 0:
        lines = ["def make_walker():", "    wc = walker_creator()"]
        lines += [f"    j{k} = wc.add_joint({x}, {y})" for k, (x, y) in enumerate(joints)]
        for m in muscles:
            extra = "" if len(m) == 2 else f", {m[2]}, {m[3]}"
            lines.append(f"    wc.add_muscle(j{m[0]}, j{m[1]}{extra})")
        lines.append("    return wc.get_walker()")
        return "\n".join(lines) + "\n"
    if style == 1:
        bones = [m for m in muscles if len(m) == 2]
        active = [m for m in muscles if len(m) == 4]
        lines = ["# a body from tables: joint positions, passive bones, active muscles", ""]
        lines.append("JOINTS = [")
        lines += [f"    ({x}, {y})," for x, y in joints]
        lines += ["]", "BONES = ["]
        lines += [f"    ({a}, {b})," for a, b in bones]
        lines += ["]", "MUSCLES = [  # (joint, joint, amplitude, phase)"]
        lines += [f"    ({a}, {b}, {amp}, {ph})," for a, b, amp, ph in active]
        lines += [
            "]",
            "",
            "",
            "def make_walker():",
            "    wc = walker_creator()",
            "    joints = [wc.add_joint(x, y) for x, y in JOINTS]",
            "    for a, b in BONES:",
            "        wc.add_muscle(joints[a], joints[b])",
            "    for a, b, amplitude, phase in MUSCLES:",
            "        wc.add_muscle(joints[a], joints[b], amplitude, phase)",
            "    return wc.get_walker()",
        ]
        return "\n".join(lines) + "\n"
    # style 2: a grid of joints built by loops, with a list of extra connections
    cols = rng.randint(2, 4)
    rows = rng.randint(2, 3)
    spacing = rng.choice((2.0, 3.0, 4.0, 5.0))
    amplitude = rng.choice((2.0, 4.0, 5.0, 8.0))
    lines = [
        "import math",
        "",
        f"COLS = {cols}",
        f"ROWS = {rows}",
        f"SPACING = {spacing}",
        f"AMPLITUDE = {amplitude}",
        "",
        "",
        "def make_walker():",
        "    wc = walker_creator()",
        "    grid = []",
        "    for r in range(ROWS):",
        "        row = []",
        "        for c in range(COLS):",
        "            row.append(wc.add_joint(c * SPACING, r * SPACING))",
        "        grid.append(row)",
        "    for r in range(ROWS):",
        "        for c in range(COLS - 1):",
        "            wc.add_muscle(grid[r][c], grid[r][c + 1])",
        "    for r in range(ROWS - 1):",
        "        for c in range(COLS):",
        f"            phase = {rng.choice(('c / COLS', '(r + c) * 0.25', '0.5 * r', '0.0'))}",
        "            wc.add_muscle(grid[r][c], grid[r + 1][c], AMPLITUDE, phase)",
    ]
    if rng.random() < 0.5:
        lines.append("    wc.add_muscle(grid[0][0], grid[ROWS - 1][COLS - 1], AMPLITUDE, 0.5)")
    lines.append("    return wc.get_walker()")
    return "\n".join(lines) + "\n"


def random_body_corpus(
    count: int,
    seed: int,
    generations: int,
    children_per_generation: int,
    validate: Validator = exec_validator,
    exclude: set[str] = frozenset(),
) -> list[Edit]:
    """Edits of GP lineages from `count` random valid body programs (lineage `random`)."""
    rng = random.Random(f"random-bodies-{seed}")
    starts: list[str] = []
    while len(starts) < count:
        drafts = [random_body_program(rng) for _ in range(count)]
        starts += [t for t, ok in zip(drafts, validate(drafts)) if ok][: count - len(starts)]
    out: list[Edit] = []
    for k, text in enumerate(starts):
        edits = lineage(
            "random", text, random.Random(f"{seed}-{k}"), generations, children_per_generation,
            validate,
        )  # fmt: skip
        out += [e for e in edits if not {program_key(e.parent), program_key(e.child)} & exclude]
    return out


def eval_parents(
    seeds: dict[str, str],
    exclude: set[str],
    per_seed: int,
    seed: int = 12345,
    validate: Validator = exec_validator,
) -> dict[str, list[str]]:
    """Per seed, `per_seed` valid GP descendants (1-6 edits from the seed) that are not in
    `exclude` (the training programs): parents the model has never seen."""
    out: dict[str, list[str]] = {}
    for k, (name, text) in enumerate(sorted(seeds.items())):
        rng = random.Random(seed * 1000 + k)
        text = normalize_program(text)
        found: list[str] = []
        tries = 0
        while len(found) < per_seed and tries < 50:
            tries += 1
            drafts = []
            for _ in range(4 * per_seed):
                try:
                    child = normalize_program(gp.mutate_n(text, rng, rng.randint(1, 6)).text)
                except (gp.GPError, SyntaxError):
                    continue
                if child not in exclude and child not in found and child not in drafts:
                    drafts.append(child)
            for child, good in zip(drafts, validate(drafts)):
                if good and len(found) < per_seed:
                    found.append(child)
        out[name] = found
    return out
