"""`stage1.py report`: curves, final archives and tables of every stage-1 run there is.

Reads each run directory `OUT/ARM-SEED-sN` (metrics.jsonl, config.yaml, the store read-only) and
writes into `--figures`:

- `curves-SEED.png`: niches filled and QD score against evaluations, one line per arm (the mean
  over random seeds) with the band between the lowest and highest seed;
- `archive-ARM-SEED-sN.png`: the final archive of each run (`elmjax.viz.heatmaps`);
- `stage1.md`: a table of every run (budget, evaluations, niches, QD score, best fitness, valid
  share, diff apply failures, wall time) and a table per arm x seed at equal evaluations;
- `stage1.json`: the same figures, machine-readable.
Runs that have not reached their arm's budget are marked "partial" everywhere.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections import defaultdict
from pathlib import Path

import numpy as np

NAME = re.compile(r"^(?P<arm>[a-z_]+)-(?P<seed>[a-z_]+)-s(?P<rs>\d+)$")
ARM_ORDER = ("gp", "diff", "diff_ft", "prompt")
SEED_ORDER = ("square", "radial", "cppn_fixed", "cppn_mutable")


def read_metrics(path: Path) -> list[dict]:
    rows = []
    for line in (path / "metrics.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def outcome_counts(path: Path) -> dict[str, int]:
    """Candidates per outcome kind, read-only (a running run is never written to)."""
    db = sqlite3.connect(f"file:{path / 'programs.sqlite'}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT outcome_kind, COUNT(*) FROM programs GROUP BY outcome_kind"))
    finally:
        db.close()


def run_summary(path: Path) -> dict | None:
    import yaml

    m = NAME.match(path.name)
    if not m or not (path / "metrics.jsonl").exists():
        return None
    rows = read_metrics(path)
    if not rows:
        return None
    config = yaml.safe_load((path / "config.yaml").read_text())
    last = rows[-1]
    counts = outcome_counts(path)
    total = sum(counts.values())
    budget = int(config["budget"])
    return {
        "run": path.name,
        "arm": m["arm"],
        "seed": m["seed"],
        "random_seed": int(m["rs"]),
        # a model directory is named by its last part (diff_ft's `OUT/models/elm-tiny-ft`)
        "model": Path(config["mutation"]["model"]).name
        if config["mutation"]["operator"] != "gp"
        else None,
        "budget": budget,
        "evaluations": int(last["evaluations"]),
        "finished": int(last["evaluations"]) >= budget,
        "generations": int(last["generation"]),
        "niches": int(last["num_filled"]),
        "qd_score": float(last["qd_score"]),
        "max_fitness": float(last["max_fitness"]),
        "valid_rate": float(last["valid_rate_total"]),
        "apply_failures": counts.get("apply", 0) / max(1, total),
        "wall_seconds": float(last.get("elapsed", 0.0)),
        "curve": [
            (int(r["evaluations"]), int(r["num_filled"]), float(r["qd_score"])) for r in rows
        ],
    }


def at_evaluations(curve: list[tuple[int, int, float]], n: int) -> tuple[float, float] | None:
    """(niches, QD) of a run when it had spent n evaluations (None if it never got there)."""
    ev = np.array([c[0] for c in curve])
    if ev[-1] < n:
        return None
    i = int(np.searchsorted(ev, n))
    return float(curve[i][1]), float(curve[i][2])


def plot_curves(runs: list[dict], figures: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    by_seed = defaultdict(lambda: defaultdict(list))
    for r in runs:
        by_seed[r["seed"]][r["arm"]].append(r)
    for seed in [s for s in SEED_ORDER if s in by_seed]:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for arm in [a for a in ARM_ORDER if a in by_seed[seed]]:
            group = by_seed[seed][arm]
            top = max(r["curve"][-1][0] for r in group)
            grid = np.linspace(0, top, 200)
            for k, (ax, label) in enumerate(zip(axes, ("niches filled", "QD score"))):
                # a run counts at x only while it has data there (partial runs end early)
                ys = np.array(
                    [
                        np.where(
                            grid <= r["curve"][-1][0],
                            np.interp(
                                grid, [c[0] for c in r["curve"]], [c[1 + k] for c in r["curve"]]
                            ),
                            np.nan,
                        )
                        for r in group
                    ]
                )
                budgets = sorted({r["budget"] for r in group})
                name = f"{arm} (n={len(group)}, budget {'/'.join(f'{b:,}' for b in budgets)})"
                (line,) = ax.plot(grid, np.nanmean(ys, 0), label=name)
                ax.fill_between(
                    grid, np.nanmin(ys, 0), np.nanmax(ys, 0), color=line.get_color(), alpha=0.2
                )
                ax.set_xlabel("evaluations")
                ax.set_ylabel(label)
        axes[0].set_title(f"{seed}: niches filled (of 1,728)")
        axes[1].set_title(f"{seed}: QD score")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        path = figures / f"curves-{seed}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        out.append(path)
    return out


def plot_archive(run_path: Path, figures: Path) -> Path | None:
    """The final archive of a run: its best valid program per cell, from the store."""
    from elmjax import qd
    from elmjax.run_dir import grid_spec, load_run_config, make_environment
    from elmjax.viz.heatmaps import plot_archive as draw

    config = load_run_config(run_path)
    spec = grid_spec(config, make_environment(config))
    db = sqlite3.connect(f"file:{run_path / 'programs.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT program_id, fitness, descriptor FROM programs WHERE valid = 1 AND "
            "fitness IS NOT NULL AND entered = 1"
        ).fetchall()
    finally:
        db.close()
    if not rows:
        return None
    n = len(rows)
    size = 1 << max(6, (n - 1).bit_length())
    fit = np.zeros(size, np.float32)
    desc = np.zeros((size, spec.dim), np.float32)
    valid = np.zeros(size, bool)
    pid = np.full(size, -1, np.int32)
    for i, (p, f, d) in enumerate(rows):
        fit[i], desc[i], valid[i], pid[i] = f, json.loads(d), True, p
    archive, _ = qd.insert(qd.init(spec), fit, desc, valid, pid)
    return draw(archive, path=figures / f"archive-{run_path.name}.png", title=run_path.name)


def run_table(runs: list[dict]) -> str:
    lines = [
        "| run | model | budget | evaluations | niches | QD score | best | valid | diff apply "
        "failures | wall time |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        part = "" if r["finished"] else " (partial)"
        applied = f"{r['apply_failures']:.1%}" if r["run"].startswith("diff") else "-"
        lines.append(
            f"| {r['run']}{part} | {r['model'] or '-'} | {r['budget']:,} | {r['evaluations']:,} | "
            f"{r['niches']} | {r['qd_score']:,.0f} | {r['max_fitness']:.1f} | "
            f"{r['valid_rate']:.1%} | {applied} | {r['wall_seconds'] / 60:.1f} min |"
        )
    return "\n".join(lines) + "\n"


def equal_table(runs: list[dict], equal: int) -> str:
    lines = [
        f"At equal evaluations ({equal:,}; runs that got there), mean and range over random seeds:",
        "",
        "| arm | seed | runs | niches mean (min-max) | QD mean (min-max) |",
        "|---|---|---|---|---|",
    ]
    groups = defaultdict(list)
    for r in runs:
        value = at_evaluations(r["curve"], equal)
        if value is not None:
            groups[(r["arm"], r["seed"])].append(value)
    for arm in ARM_ORDER:
        for seed in SEED_ORDER:
            vals = groups.get((arm, seed))
            if not vals:
                continue
            n = np.array([v[0] for v in vals])
            q = np.array([v[1] for v in vals])
            lines.append(
                f"| {arm} | {seed} | {len(vals)} | {n.mean():.0f} ({n.min():.0f}-{n.max():.0f}) "
                f"| {q.mean():,.0f} ({q.min():,.0f}-{q.max():,.0f}) |"
            )
    return "\n".join(lines) + "\n"


def report(args) -> int:
    out, figures = Path(args.out), Path(args.figures)
    figures.mkdir(parents=True, exist_ok=True)
    runs = [s for p in sorted(out.iterdir()) if p.is_dir() and (s := run_summary(p))]
    runs.sort(
        key=lambda r: (
            ARM_ORDER.index(r["arm"]) if r["arm"] in ARM_ORDER else 9,
            SEED_ORDER.index(r["seed"]),
            r["random_seed"],
        )
    )
    if not runs:
        print(f"no stage-1 runs under {out}")
        return 1
    plot_curves(runs, figures)
    for r in runs:
        if r["random_seed"] == 0:
            plot_archive(out / r["run"], figures)
    budgets = sorted({1000} | {r["budget"] for r in runs if r["finished"]})
    text = "\n".join([run_table(runs)] + [equal_table(runs, n) for n in budgets])
    (figures / "stage1.md").write_text(text)
    (figures / "stage1.json").write_text(
        json.dumps([{k: v for k, v in r.items() if k != "curve"} for r in runs], indent=1)
    )
    print(text)
    return 0
