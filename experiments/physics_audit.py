"""Audit what evolution finds under the simulator: do the best walkers walk, or exploit physics?

    python experiments/physics_audit.py [--quick] [--json PATH] [--budget N] [--seeds 0,1,2]
        [--runs DIR] [--sheet PNG] [--top K]
    python experiments/physics_audit.py --existing RUN_DIR [RUN_DIR ...] [--json PATH] [--top K]

1. A GP search (`elmjax evolve`, operator `gp`, the default config otherwise) at a FIXED number
   of evaluations per seed (`--budget`; not wall time, so a loaded machine changes only how long
   it takes, not what it finds).
2. The archive's elites (best valid program per cell, from the run's program store) are re-run
   in the sandbox with the seed the run gave them and simulated again (recorded every frame),
   and for the top K by fitness we report: travel (|dx| of the centre of mass, units), travel per
   body size (travel / max(width, height)), airborne fraction (frames with no joint within 0.05
   units of the ground), peak centre-of-mass speed (units/s), peak joint acceleration (g), the
   free-flight residual (RMS of the centre of mass's vertical acceleration + g over airborne
   frames, in g: 0 for momentum-conserving physics), muscle power per unit mass (W/kg, when the
   simulator reports `muscle_work`), and robustness: Spearman rank correlation of the elites'
   scores against the reference substeps max(12, 2 x default) and under a 0.001-unit jitter of
   every joint, and the share of elites whose score changes by more than half.
   `--existing` skips the search and audits run directories made by any config (e.g. stage 1's
   runs from Radial or the CPPN seeds), each with the `seed` in its `config.yaml`.
3. `--sheet PNG`: a contact sheet of the top 5 elites of the first seed: 12 frames over the
   10 s, every panel at the same scale, the ground drawn.

It only uses APIs that exist before and after the physics rework (the `elmjax evolve` command,
the program store's `programs` table, `record_walker`, `Sodarace`), so the same script audits
today's physics from an older checkout: `PYTHONPATH=/path/to/old/checkout python ...`.
Everything is measured from recordings, not from simulator internals, except muscle power.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

GRAVITY = 98.1  # units/s^2 (one unit = 0.1 m)
TOUCH = 0.05  # units: a joint within this of the ground touches it
UNITS_PER_M = 10.0


def program_seed(run_seed: int, program_id: int) -> int:
    """The seed of `random` the ELM loop gave a program (elm.program_seed)."""
    return int(np.random.SeedSequence([run_seed, program_id]).generate_state(1)[0] >> 1)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties)."""

    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v), np.float64)
        r[order] = np.arange(len(v), dtype=np.float64)
        for value in np.unique(v):  # average ties
            same = v == value
            r[same] = r[same].mean()
        return r

    if len(a) < 2:
        return float("nan")
    ra, rb = ranks(np.asarray(a, np.float64)), ranks(np.asarray(b, np.float64))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def run_search(
    run_dir: Path, seed: int, budget: int, seed_program: str = "square", physics: tuple = ()
) -> None:
    """`elmjax evolve` with the GP operator for `budget` evaluations (skipped when done), from
    `seed_program`, with `physics` (`KEY=VALUE` settings) applied to the simulator."""
    if (run_dir / "programs.sqlite").exists() and (run_dir / "DONE").exists():
        return
    cmd = [
        sys.executable, "-m", "elmjax.cli", "evolve", "--out", str(run_dir), "--force",
        "--operator", "gp", "--set", f"seed={seed}", "--set", f"budget={budget}",
        "--set", "time_limit=null", "--set", "report=false", "--seed-program", seed_program,
    ]  # fmt: skip
    for setting in physics:
        cmd += ["--set", f"env.physics.{setting}"]
    t0 = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    (run_dir / "DONE").write_text(json.dumps({"seconds": time.time() - t0, "cmd": cmd}))


def run_seed(run_dir: Path) -> int:
    """The `seed` of a run directory's `config.yaml` (the loop seeds each program from it)."""
    import yaml

    return int(yaml.safe_load((run_dir / "config.yaml").read_text())["seed"])


def elites(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Best valid program per cell, best first, and run totals (evaluations, valid children)."""
    db = sqlite3.connect(f"file:{run_dir / 'programs.sqlite'}?mode=ro", uri=True)
    rows = db.execute(
        "SELECT program_id, text, fitness, descriptor, cell FROM programs "
        "WHERE valid = 1 AND cell >= 0 AND fitness IS NOT NULL ORDER BY fitness DESC"
    ).fetchall()
    total, valid = db.execute("SELECT COUNT(*), SUM(valid) FROM programs").fetchone()
    children, valid_children = db.execute(
        "SELECT COUNT(*), SUM(valid) FROM programs WHERE generation > 0"
    ).fetchone()
    db.close()
    best: dict[int, dict[str, Any]] = {}
    for pid, text, fit, desc, cell in rows:
        if cell not in best:
            best[cell] = {"program_id": pid, "text": text, "fitness": fit, "cell": cell,
                          "descriptor": json.loads(desc)}  # fmt: skip
    out = sorted(best.values(), key=lambda e: -e["fitness"])
    totals = {
        "evaluations": int(total),
        "valid_rate": float(valid or 0) / max(int(total), 1),
        "valid_rate_children": float(valid_children or 0) / max(int(children), 1),
        "coverage": len(out),
    }
    return out, totals


def walkers_of(entries: list[dict[str, Any]], run_seed: int) -> list[Any]:
    """Re-run elite programs in the sandbox as the loop did (same `random` seed)."""
    from elmjax.sandbox import Limits, run_programs
    from elmjax.sodarace.walker import check_walker

    results = run_programs(
        [e["text"] for e in entries], "make_walker", check_walker, limits=Limits(workers=2),
        seeds=[program_seed(run_seed, e["program_id"]) for e in entries],
        inject={"walker_creator": "elmjax.sodarace.walker:walker_creator"},
    )  # fmt: skip
    return [r.value if r.ok else None for r in results]


def measure(walker: Any, params: Any) -> dict[str, Any]:
    """Figures of one walker from a recording of every frame (see module docstring)."""
    from elmjax.sodarace.env import record_walker

    body, rec = record_walker(walker, "flat", params, record_every=1)
    x = np.asarray(rec.x)[:, :, 0].astype(np.float64)  # [F, J]
    y = np.asarray(rec.y)[:, :, 0].astype(np.float64)
    mass = np.asarray(body.mass)[:, 0].astype(np.float64)
    real = mass > 0
    x, y, mass = x[:, real], y[:, real], mass[real]
    cx, cy = (x * mass).sum(1) / mass.sum(), (y * mass).sum(1) / mass.sum()
    dt = params.dt
    size = max(np.ptp(x[0]), np.ptp(y[0]))
    travel = abs(cx[-1] - cx[0])
    touching = (y <= TOUCH).any(axis=1)
    vx, vy = np.diff(cx) / dt, np.diff(cy) / dt
    ax = np.diff(x, 2, axis=0) / dt**2
    ay = np.diff(y, 2, axis=0) / dt**2
    # free flight: COM vertical acceleration on frames whose neighbours are airborne too
    air3 = ~touching[:-2] & ~touching[1:-1] & ~touching[2:]
    acy = np.diff(cy, 2) / dt**2
    acx = np.diff(cx, 2) / dt**2
    residual = (
        float(np.sqrt(np.mean((acy[air3] + GRAVITY) ** 2 + acx[air3] ** 2)) / GRAVITY)
        if air3.sum() >= 3
        else None
    )
    result = rec.result
    out = {
        "travel": float(travel),
        "body_size": float(size),
        "travel_per_size": float(travel / max(size, 1e-9)),
        "airborne_fraction": float(1.0 - touching[1:].mean()),
        "peak_speed": float(np.sqrt(vx**2 + vy**2).max()),
        "peak_joint_accel_g": float(np.sqrt(ax**2 + ay**2).max() / GRAVITY),
        "free_flight_residual_g": residual,
        "airborne_frames": int((~touching[1:]).sum()),
        "valid": bool(np.asarray(result.valid)[0]),
        "path": (x, y),
    }
    work = getattr(result, "muscle_work", None)
    if work is not None:  # units^2/s^2 per mass unit; / T -> units^2/s^3 = 0.01 W/kg
        out["muscle_power_w_per_kg"] = float(np.asarray(work)[0]) / params.seconds / 100.0
    return out


def robustness(walkers: list[Any], params: Any) -> dict[str, Any]:
    """Scores at the defaults vs the substep reference and under a 0.001-unit jitter."""
    from elmjax.sodarace.env import Sodarace

    base = Sodarace(params=params, mesh=None).evaluate(walkers)
    ref_steps = max(12, 2 * params.substeps)
    ref = Sodarace(params=params.replace(substeps=ref_steps), mesh=None).evaluate(walkers)
    rng = np.random.default_rng(0)
    jittered = []
    for w in walkers:
        joints = np.asarray(w["joints"], np.float64)
        joints = joints + rng.uniform(-0.001, 0.001, joints.shape)
        jittered.append({**w, "joints": joints.tolist()})
    jit = Sodarace(params=params, mesh=None).evaluate(jittered)
    f0, fr, fj = base.fitness, ref.fitness, jit.fitness

    def changed(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.mean(np.abs(b - a) > 0.5 * np.maximum(np.abs(a), 1e-9)))

    return {
        "reference_substeps": ref_steps,
        "default_substeps": params.substeps,
        "rank_corr_reference": spearman(f0, fr),
        "rank_corr_jitter": spearman(f0, fj),
        "changed_by_half_reference": changed(f0, fr),
        "changed_by_half_jitter": changed(f0, fj),
        "median_default": float(np.median(f0)),
        "median_reference": float(np.median(fr)),
        "median_ratio": float(np.median(f0) / max(np.median(fr), 1e-9)),
        "valid_default": int(base.valid.sum()),
        "valid_reference": int(ref.valid.sum()),
    }


def contact_sheet(paths: list[tuple[np.ndarray, np.ndarray]], labels: list[str], file: str,
                  walkers: list[Any], frames: int = 12) -> None:  # fmt: skip
    """One row per elite, `frames` panels over the run, all at one scale, ground at y = 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    span = max(max(np.ptp(x[0]), np.ptp(y[0])) for x, y in paths) * 1.6 + 4.0
    top = max(float(y.max()) for _, y in paths) + 2.0
    height = min(max(span * 0.75, top), 3.0 * span)
    fig, axes = plt.subplots(
        len(paths), frames, figsize=(1.6 * frames, 1.6 * len(paths) * height / span + 0.3),
        squeeze=False,
    )  # fmt: skip
    for row, ((x, y), label, w) in enumerate(zip(paths, labels, walkers)):
        n = len(x)
        springs = [(int(m[0]), int(m[1]), m[2].get("type") == "muscle") for m in w["muscles"]]
        for col in range(frames):
            k = round(col * (n - 1) / (frames - 1))
            ax = axes[row, col]
            cx = float(x[k].mean())
            for i, j, active in springs:
                ax.plot([x[k, i], x[k, j]], [y[k, i], y[k, j]], lw=0.8,
                        color="tab:red" if active else "black")  # fmt: skip
            ax.plot(x[k], y[k], "o", ms=1.5, color="tab:blue")
            ax.axhspan(-height, 0.0, color="0.85")
            ax.axhline(0.0, color="0.3", lw=0.8)
            ax.set_xlim(cx - span / 2, cx + span / 2)
            ax.set_ylim(-0.08 * height, 0.92 * height)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"t={k / 60:.1f}s x={cx:.0f}", fontsize=6)
            if col == 0:
                ax.set_ylabel(label, fontsize=6)
    fig.suptitle(f"top elites, 12 frames over 10 s; every panel {span:.0f} units wide", fontsize=8)
    fig.tight_layout()
    fig.savefig(file, dpi=110)
    plt.close(fig)


def audit_run(run_dir: Path, seed: int, top: int, params: Any) -> dict[str, Any]:
    entries, totals = elites(run_dir)
    chosen = entries[:top]
    walkers = walkers_of(chosen, seed)
    rows, kept = [], []
    for e, w in zip(chosen, walkers):
        if w is None:
            continue
        m = measure(w, params)
        m["stored_fitness"] = e["fitness"]
        m["program_id"] = e["program_id"]
        rows.append(m)
        kept.append(w)
    all_walkers = [w for w in walkers_of(entries, seed) if w is not None]
    robust = robustness(all_walkers, params) if len(all_walkers) >= 2 else {}
    return {"seed": seed, **totals, "elites_rerun": len(all_walkers), "top": rows,
            "walkers": kept, "robustness": robust}  # fmt: skip


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def med(key: str) -> float | None:
        vals = [r[key] for r in rows if r.get(key) is not None]
        return float(np.median(vals)) if vals else None

    return {
        "median_airborne_fraction": med("airborne_fraction"),
        "median_peak_speed": med("peak_speed"),
        "max_peak_speed": max((r["peak_speed"] for r in rows), default=None),
        "best_travel_per_size": max((r["travel_per_size"] for r in rows), default=None),
        "median_travel_per_size": med("travel_per_size"),
        "median_travel": med("travel"),
        "median_peak_joint_accel_g": med("peak_joint_accel_g"),
        "median_free_flight_residual_g": med("free_flight_residual_g"),
        "median_muscle_power_w_per_kg": med("muscle_power_w_per_kg"),
    }


def markdown(out: dict[str, Any]) -> str:
    """The RESULTS.md table of an audit (one row per run seed, then all runs together)."""

    def f(v: Any, fmt: str) -> str:
        return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, fmt)

    lines = [
        "| seed | evals | coverage | valid children | top-10 median airborne | median / max peak "
        "COM speed (units/s) | best / median travel per size | median peak joint accel (g) | "
        "free-flight residual (g) | muscle power (W/kg) | rank corr vs ref / jitter | changed "
        "by half vs ref / jitter | median default / ref |",
        "|" + "---|" * 13,
    ]
    for run in out["runs"]:
        s, r = run["summary"], run["robustness"]
        lines.append(
            f"| {run.get('name', run['seed'])} | {run['evaluations']} | {run['coverage']} | "
            f"{run['valid_rate_children']:.1%} | {f(s['median_airborne_fraction'], '.2f')} | "
            f"{f(s['median_peak_speed'], '.0f')} / {f(s['max_peak_speed'], '.0f')} | "
            f"{f(s['best_travel_per_size'], '.1f')} / {f(s['median_travel_per_size'], '.1f')} | "
            f"{f(s['median_peak_joint_accel_g'], '.0f')} | "
            f"{f(s['median_free_flight_residual_g'], '.2f')} | "
            f"{f(s['median_muscle_power_w_per_kg'], '.0f')} | "
            f"{f(r.get('rank_corr_reference'), '.2f')} / {f(r.get('rank_corr_jitter'), '.2f')} | "
            f"{f(r.get('changed_by_half_reference'), '.0%')} / "
            f"{f(r.get('changed_by_half_jitter'), '.0%')} | "
            f"{f(r.get('median_default'), '.0f')} / {f(r.get('median_reference'), '.0f')} "
            f"({r.get('default_substeps')} vs {r.get('reference_substeps')} substeps) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one seed, 1,500 evaluations, top 5")
    ap.add_argument("--budget", type=int, default=None, help="evaluations per GP run (10,000)")
    ap.add_argument("--seeds", default=None, help="comma-separated run seeds (0,1,2)")
    ap.add_argument("--top", type=int, default=None, help="elites measured per run (10)")
    ap.add_argument("--runs", default="experiments/_audit_runs", help="where run dirs go")
    ap.add_argument("--sheet", default=None, help="contact sheet PNG of the first run's top 5")
    ap.add_argument("--json", default=None, help="write every figure here")
    ap.add_argument("--label", default="", help="a name for this physics in the output")
    ap.add_argument("--seed-program", default="square", help="the seed GP evolves from (square)")
    ap.add_argument("--physics", action="append", default=[], metavar="KEY=VALUE",
                    help="a simulator setting for the search and the audit (repeatable)")  # fmt: skip
    ap.add_argument("--markdown", default=None, metavar="JSON", help="print the table of a --json")
    ap.add_argument("--existing", nargs="+", default=None, metavar="RUN_DIR",
                    help="audit these finished run directories instead of searching")  # fmt: skip
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return 0
    budget = args.budget or (1500 if args.quick else 10_000)
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    top = args.top or (5 if args.quick else 10)

    from elmjax.sodarace.physics import SimParams, with_overrides

    params = with_overrides(SimParams(), dict(kv.split("=", 1) for kv in args.physics))
    out: dict[str, Any] = {"label": args.label, "budget": budget, "seeds": seeds, "top": top,
                           "seed_program": args.seed_program, "physics": args.physics,
                           "load_average": os.getloadavg(), "runs": []}  # fmt: skip
    if args.existing:
        todo = [(Path(d), run_seed(Path(d))) for d in args.existing]
        out.update(seeds=[s for _, s in todo], budget=None, seed_program=None)
    else:
        todo = [(Path(args.runs) / f"{args.label or 'run'}_b{budget}_s{s}", s) for s in seeds]
    for run_dir, seed in todo:
        t0 = time.time()
        if not args.existing:
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            run_search(run_dir, seed, budget, args.seed_program, tuple(args.physics))
        res = audit_run(run_dir, seed, top, params)
        res["run_dir"] = str(run_dir)
        if args.existing:
            res["name"] = run_dir.name
        if not args.existing:
            res["search_seconds"] = json.loads((run_dir / "DONE").read_text())["seconds"]
        res["audit_seconds"] = time.time() - t0
        if args.sheet and run_dir == todo[0][0] and res["top"]:
            five = res["top"][:5]
            labels = [f"#{k + 1} {r['travel_per_size']:.1f} sizes air {r['airborne_fraction']:.0%}"
                      for k, r in enumerate(five)]  # fmt: skip
            contact_sheet([r["path"] for r in five], labels, args.sheet, res["walkers"][:5])
        res.pop("walkers")
        for r in res["top"]:
            r.pop("path")
        res["summary"] = summary(res["top"])
        out["runs"].append(res)
        print(json.dumps({k: v for k, v in res.items() if k != "top"}), flush=True)
    out["summary"] = summary([r for run in out["runs"] for r in run["top"]])
    print(json.dumps(out["summary"]))
    print(markdown(out))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
