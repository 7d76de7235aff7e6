"""How good are each operator's children? GP vs the LM operators on held-out Sodarace parents.

    python benchmarks/operators.py [--quick] [--json PATH] [--parents-per-seed K] [--children N]

Parents: valid GP descendants of each of the paper's four seeds that elm-tiny never saw in
training, frozen in `benchmarks/eval_parents.json` (a copy of the set elm-tiny v1 shipped, less the
parents that today's validity rules reject, listed there), so a new model bundle cannot change
them; the cppn_mutable lineage is held out of all training data whole. For each operator x model -- gp; diff with elm-tiny; prompt and diff with SmolLM2-135M
(`--quick`: gp and elm-tiny only) -- N children per parent go through the sandbox, and we report:

- apply: share of children the operator turned into program text (diff applied / code parsed)
- valid: share that are valid walkers (sandbox + `check_walker`)
- different: share that are valid and build a different walker than their parent
- descriptor_distance: mean distance from the parent's (height, width, mass), each dimension
  scaled by its range in the Sodarace descriptor space, over valid children
- new_cell: share of valid children in a different cell of a 12^3 grid over that space
- heldout_lineage_apply: apply share on the cppn_mutable parents (a lineage no model trained
  here has seen)
- strict (numbered diff models, e.g. elm-tiny): the same figures for the same completions
  applied by content alone, without the numbered format's line-number rule
  (`diff_format.apply_numbered`); the default figures include it
- children_per_s: children per second of `mutate` (model load excluded, first-call compile
  included: a run of ELM pays it once)

`ratios` (elmjax JSON convention, higher is better for the LM operator): `valid_vs_gp` and
`new_cell_vs_gp` of each LM operator over GP.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

import numpy as np

os.environ.setdefault("JAX_PLATFORMS", "cpu")

GRID = 12
INJECT = {"walker_creator": "elmjax.sodarace.walker:walker_creator"}


EVAL_PARENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "eval_parents.json")


def load_parents(per_seed: int) -> dict[str, list[str]]:
    with open(EVAL_PARENTS) as f:
        parents = json.load(f)["parents"]
    return {name: texts[:per_seed] for name, texts in parents.items()}


def walkers(texts: list[str]) -> list[dict | None]:
    from elmjax.sandbox import run_programs
    from elmjax.sodarace.walker import check_walker

    results = run_programs(texts, "make_walker", check_walker, inject=INJECT)
    return [r.value if r.ok else None for r in results]


def descriptor_space():
    from elmjax.sodarace.env import Sodarace

    return Sodarace().descriptor_space


def measure(op, by_seed: dict[str, list[str]], n: int, seed: int, space) -> dict[str, dict]:
    """One batched `mutate` over every parent (as ELM batches), then figures per seed.

    Returns (figures per seed, children/s, seconds, strict figures per seed or None). A numbered
    diff operator's children are also rebuilt from the same completions under the content rule
    alone (`DiffFormat.apply(by_number=False)`), so the strict and the default figures come from
    one set of samples."""
    names = [name for name, texts in by_seed.items() for _ in texts]
    parents = [t for texts in by_seed.values() for t in texts]
    parent_walkers = walkers(parents)
    t0 = time.perf_counter()
    children = op.mutate(parents, n, seed)
    seconds = time.perf_counter() - t0
    variants = {"default": [(c.text, c.error_kind) for c in children]}
    fmt = getattr(op, "format", None) if op.name == "diff" else None
    if fmt is not None and fmt.name == "numbered":
        strict = [fmt.apply(parents[k // n], c.raw_output or "", by_number=False) for k, c in
                  enumerate(children)]  # fmt: skip
        variants["strict"] = [(a.text, None if a.ok else "apply") for a in strict]
    unique = sorted({t for v in variants.values() for t, _ in v if t is not None})
    by_text = dict(zip(unique, walkers(unique) if unique else []))
    figures = {
        key: tally(v, by_text, names, n, parent_walkers, by_seed, space)
        for key, v in variants.items()
    }
    return figures["default"], len(children) / seconds, seconds, figures.get("strict")


def scaled_descriptor(walker: dict, space: Any) -> np.ndarray:
    """A walker's descriptor scaled to [0, 1] per axis of `space` (beyond the range: outside)."""
    lo, hi = np.asarray(space.low), np.asarray(space.high)
    return (np.array([walker["descriptor"][k] for k in space.names]) - lo) / (hi - lo)


def grid_cell(x: np.ndarray) -> tuple:
    """The GRID^3 cell of a scaled descriptor, edges clipped into the edge cells."""
    return tuple(np.clip(np.floor(x * GRID), 0, GRID - 1).astype(int))


def tally(children, by_text, names, n, parent_walkers, by_seed, space) -> dict[str, dict]:
    """Per-seed figures of (text, error kind) children, parent-major with n per parent."""

    rows: dict[str, dict] = {
        name: {"children": 0, "applied": 0, "valid": 0, "different": 0, "new_cell": 0,
               "distances": [], "errors": {}}
        for name in by_seed
    }  # fmt: skip
    for k, (text, error_kind) in enumerate(children):
        row = rows[names[k // n]]
        row["children"] += 1
        if text is None:
            row["errors"][error_kind] = row["errors"].get(error_kind, 0) + 1
            continue
        row["applied"] += 1
        w = by_text[text]
        if w is None:
            row["errors"]["invalid"] = row["errors"].get("invalid", 0) + 1
            continue
        row["valid"] += 1
        pw = parent_walkers[k // n]
        if pw is None:
            continue
        a, b = scaled_descriptor(w, space), scaled_descriptor(pw, space)
        body = {kk: w[kk] for kk in ("joints", "muscles")}
        row["different"] += body != {kk: pw[kk] for kk in ("joints", "muscles")}
        row["distances"].append(float(np.linalg.norm(a - b)))
        row["new_cell"] += grid_cell(a) != grid_cell(b)
    out = {}
    for name, row in rows.items():
        total = max(row["children"], 1)
        out[name] = {
            "children": row["children"],
            "apply": row["applied"] / total,
            "valid": row["valid"] / total,
            "different": row["different"] / total,
            "descriptor_distance": float(np.mean(row["distances"])) if row["distances"] else 0.0,
            "new_cell": row["new_cell"] / max(row["valid"], 1),
            "errors": row["errors"],
        }
    return out


def summary(per_seed: dict[str, dict]) -> dict[str, float]:
    """Means over seeds, and the held-out lineage's apply share."""
    overall = {
        key: float(np.mean([r[key] for r in per_seed.values()]))
        for key in ("apply", "valid", "different", "descriptor_distance", "new_cell")
    }
    if "cppn_mutable" in per_seed:  # the lineage no training set has seen
        overall["heldout_lineage_apply"] = per_seed["cppn_mutable"]["apply"]
    return overall


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("--parents-per-seed", type=int, default=4)
    p.add_argument("--children", type=int, default=4, help="children per parent")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument(
        "--ops",
        default=None,
        help="comma-separated operator[:model] list (default: gp, diff:elm-tiny, and without "
        "--quick prompt:smollm2-135m, diff:smollm2-135m); gp is always included",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.parents_per_seed, args.children = 1, 2

    from elmjax.mutation.operators import make_operator

    labels = args.ops.split(",") if args.ops else ["gp", "diff:elm-tiny"]
    if not args.ops and not args.quick:
        labels += ["prompt:smollm2-135m", "diff:smollm2-135m"]
    if "gp" not in labels:
        labels.insert(0, "gp")  # the reference of every ratio
    specs = [(lab.partition(":")[0], lab.partition(":")[2] or None) for lab in labels]
    by_seed = load_parents(args.parents_per_seed)
    space = descriptor_space()
    results: dict[str, dict] = {}
    for op_name, model in specs:
        label = op_name if model is None else f"{op_name}:{model}"
        if model is None:
            op = make_operator(op_name)
        else:
            # small models (elm-tiny, a local bundle) in float32; 135M+ in bf16 (~2x faster)
            small = model == "elm-tiny" or os.path.isdir(model)
            dtype = "float32" if small else "bfloat16"
            op = make_operator(op_name, model=model, temperature=args.temperature, dtype=dtype)
            t0 = time.perf_counter()
            _ = op.sampler  # load the model (not part of children/s)
            load_s = time.perf_counter() - t0
        per_seed, rate, seconds, strict = measure(op, by_seed, args.children, args.seed, space)
        overall = summary(per_seed)
        if strict is not None:  # the same completions under the content rule alone
            overall["strict"] = summary(strict)
        overall["children_per_s"] = rate
        overall["mutate_seconds"] = seconds
        overall["children"] = sum(r["children"] for r in per_seed.values())
        if model is not None:
            overall["model_load_seconds"] = load_s
        results[label] = {"overall": overall, "per_seed": per_seed}
        if strict is not None:
            results[label]["per_seed_strict"] = strict
        print(label, json.dumps(overall), flush=True)
        if args.json:  # after every operator, so a run stopped early keeps what it measured
            with open(args.json, "w") as f:
                json.dump(report(args, results), f, indent=2)
    out = report(args, results)
    print(json.dumps(out["ratios"], indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


def report(args: argparse.Namespace, results: dict) -> dict:
    gp = results["gp"]["overall"]
    ratios = {}
    for label, r in results.items():
        if label == "gp":
            continue
        key = label.replace(":", "_").replace("-", "_")
        ratios[f"valid_vs_gp_{key}"] = r["overall"]["valid"] / max(gp["valid"], 1e-9)
        ratios[f"new_cell_vs_gp_{key}"] = r["overall"]["new_cell"] / max(gp["new_cell"], 1e-9)
        if "strict" in r["overall"]:
            st = r["overall"]["strict"]
            ratios[f"valid_vs_gp_{key}_strict"] = st["valid"] / max(gp["valid"], 1e-9)
            ratios[f"new_cell_vs_gp_{key}_strict"] = st["new_cell"] / max(gp["new_cell"], 1e-9)
    return {
        "benchmark": "operators",
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "command": " ".join(["python", "benchmarks/operators.py"] + sys.argv[1:]),
        "parents_per_seed": args.parents_per_seed,
        "children_per_parent": args.children,
        "temperature": args.temperature,
        "results": results,
        "ratios": ratios,
    }


if __name__ == "__main__":
    sys.exit(main())
