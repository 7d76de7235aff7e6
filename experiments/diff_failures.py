"""Why do a diff model's children fail? Every child on the held-out evaluation parents, classified.

    python experiments/diff_failures.py [--model elm-tiny] [--json PATH]

Same parents, children per parent, seed and temperature as `benchmarks/operators.py` at its
defaults (the frozen `benchmarks/eval_parents.json`, 4 x 4 x 4 children, seed 0, T = 0.8), so
the counts add up to that benchmark's figures. Each child lands in one class:

- `apply:<why>` -- no program text. For numbered diffs `<why>` is the worst removed line of the
  diff: `number_out_of_range`; `hallucinated` (like no line of the parent); `near_other_line`
  (more than 3 tokens off line N, but >= 80% like another line); `2-3_tokens_off` /
  `one_token_off` (line N with a few tokens changed: typically the value the seed had before
  the parent's lineage changed it); `other_line_of_parent` (the text of another line, wrong
  number); `whitespace`; `exact`. Otherwise the applier's reason (`parse`, `empty`).
- `fails:<kind>` -- program text the sandbox rejects (`syntax`, `exception: <error>`,
  `invalid: <walker rule>`, ...).
- `identical_to_parent` -- the diff's edits cancel (a line removed and added back).
- `valid_same_body`, `valid_same_cell`, `valid_new_cell`.

Counted twice from one set of samples: under the content rule alone (`strict`) and under the
numbered format's default (content, then line numbers: `diff_format.apply_numbered`).
"""

from __future__ import annotations

import argparse
import collections
import difflib
import json
import os
import pathlib
import re
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.operators import (  # noqa: E402
    INJECT,
    descriptor_space,
    grid_cell,
    load_parents,
    scaled_descriptor,
)
from elmjax.mutation.diff_format import extract_diff, normalize_program, token_edits  # noqa: E402
from elmjax.mutation.unified_diff import split_lines  # noqa: E402

_REMOVED = re.compile(r"^-(\d{1,9})\|(.*)$")
#: Worst first: a diff is as bad as its worst removed line.
LINE_CLASSES = (
    "number_out_of_range",
    "hallucinated",
    "near_other_line",
    "2-3_tokens_off",
    "one_token_off",
    "other_line_of_parent",
    "whitespace",
    "exact",
)


def line_class(number: int, text: str, lines: list[str]) -> str:
    """How the text of a removed line `-number|text` relates to the parent's lines."""
    if not 1 <= number <= len(lines):
        return "number_out_of_range"
    ref = lines[number - 1]
    if " ".join(text.split()) == " ".join(ref.split()):
        return "exact" if text.rstrip("\n") == ref.rstrip("\n") else "whitespace"
    if any(text.strip() == other.strip() for other in lines):
        return "other_line_of_parent"
    edits = token_edits(text, ref)
    if edits <= 1:
        return "one_token_off"
    if edits <= 3:
        return "2-3_tokens_off"
    like = max(difflib.SequenceMatcher(None, text.strip(), o.strip()).ratio() for o in lines)
    return "near_other_line" if like >= 0.8 else "hallucinated"


def removed_lines(completion: str, parent: str) -> list[str]:
    lines = split_lines(normalize_program(parent))
    out = []
    for line in split_lines(extract_diff(completion)):
        m = _REMOVED.match(line.rstrip("\n"))
        if m:
            out.append(line_class(int(m[1]), m[2], lines))
    return out


def classify(runs: list[tuple[str | None, str]], parents, parent_of, by_text, space) -> list[str]:
    """One class per child: runs are (text or None, apply failure class) in child order."""

    def cell(w: dict) -> tuple:
        return grid_cell(scaled_descriptor(w, space))

    out = []
    for k, (text, why) in enumerate(runs):
        parent = parents[parent_of[k]]
        if text is None:
            out.append(f"apply:{why}")
            continue
        if normalize_program(text) == normalize_program(parent):
            out.append("identical_to_parent")
            continue
        res, pres = by_text[text], by_text[parent]
        if not res.ok:
            message = res.error.message.split("\n")[0]
            detail = re.sub(r"^line \d+: ", "", message)[:60]
            out.append(
                "fails:syntax"
                if res.error.kind == "syntax"
                else f"fails:{res.error.kind}: {detail}"
            )
        elif not pres.ok:
            out.append("valid_parent_invalid")
        elif all(res.value[x] == pres.value[x] for x in ("joints", "muscles")):
            out.append("valid_same_body")
        else:
            out.append(
                "valid_new_cell" if cell(res.value) != cell(pres.value) else "valid_same_cell"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="elm-tiny")
    p.add_argument("--parents-per-seed", type=int, default=4)
    p.add_argument("--children", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from elmjax.mutation.operators import make_operator
    from elmjax.sandbox import run_programs
    from elmjax.sodarace.walker import check_walker

    by_seed = load_parents(args.parents_per_seed)
    names = [name for name, texts in by_seed.items() for _ in texts]
    parents = [t for texts in by_seed.values() for t in texts]
    op = make_operator("diff", model=args.model, temperature=args.temperature, dtype="float32")
    t0 = time.perf_counter()
    children = op.mutate(parents, args.children, args.seed)
    seconds = time.perf_counter() - t0
    parent_of = [k // args.children for k in range(len(children))]
    fmt = op.format
    lines = [
        removed_lines(c.raw_output or "", parents[parent_of[k]]) for k, c in enumerate(children)
    ]
    worst = [min(ls, key=LINE_CLASSES.index) if ls else "no_removed_line" for ls in lines]
    rules = {}
    for rule, by_number in (("strict", False), ("default", True)):
        runs = []
        for k, c in enumerate(children):
            a = fmt.apply(parents[parent_of[k]], c.raw_output or "", by_number=by_number)
            why = worst[k] if a.reason == "not_found" and fmt.name == "numbered" else a.reason
            runs.append((a.text, why))
        rules[rule] = runs
    texts = sorted({t for runs in rules.values() for t, _ in runs if t is not None} | set(parents))

    by_text = dict(zip(texts, run_programs(texts, "make_walker", check_walker, inject=INJECT)))
    space = descriptor_space()
    classes = {r: classify(runs, parents, parent_of, by_text, space) for r, runs in rules.items()}
    heldout = [k for k in range(len(children)) if names[parent_of[k]] == "cppn_mutable"]
    report = {
        "experiment": "diff_failures",
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "command": " ".join(["python", "experiments/diff_failures.py"] + sys.argv[1:]),
        "load_average": os.getloadavg(),
        "model": args.model,
        "children": len(children),
        "mutate_seconds": seconds,
        "removed_line_classes": dict(collections.Counter(x for ls in lines for x in ls)),
        "counts": {r: dict(collections.Counter(c).most_common()) for r, c in classes.items()},
        "heldout_counts": {
            r: dict(collections.Counter(c[k] for k in heldout).most_common()) for r, c in classes.items()
        },
        "children_rows": [
            {"seed_name": names[parent_of[k]], "parent": parent_of[k], "strict": classes["strict"][k],
             "default": classes["default"][k], "removed_lines": lines[k]}
            for k in range(len(children))
        ],
    }  # fmt: skip
    print(f"{'class':<60} {'strict':>6} {'default':>7}")
    keys = sorted(set(classes["strict"]) | set(classes["default"]))
    for key in keys:
        s, d = classes["strict"].count(key), classes["default"].count(key)
        print(f"{key:<60} {s:>6} {d:>7}")
    print("removed-line classes:", report["removed_line_classes"])
    print("held-out lineage:", json.dumps(report["heldout_counts"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
