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

import random
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from elmjax.mutation import gp
from elmjax.mutation.diff_format import MESSAGES, DiffExample, diff_example, normalize_program

#: Lineages never used for training: evaluation on unseen programs.
HELD_OUT: tuple[str, ...] = ("cppn_mutable", "runner")

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

    def example(self) -> DiffExample:
        return diff_example(self.parent, self.child, message_for(self.kind))


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
) -> dict[str, list[Edit]]:
    """Edits per lineage: {'train': [...], 'held_out': [...]} (held-out lineages' edits are for
    evaluation only)."""
    out: dict[str, list[Edit]] = {"train": [], "held_out": []}
    for k, (name, text) in enumerate(sorted(seeds.items())):
        rng = random.Random(seed * 1000 + k)
        edits = lineage(name, text, rng, generations, children_per_generation, validate)
        out["held_out" if name in held_out else "train"].extend(edits)
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
