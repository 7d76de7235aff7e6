"""`stage1.py report`: curves, final archives and tables of every stage-1 run there is.

Reads each run directory `OUT/ARM-SEED-sN` (metrics.jsonl, config.yaml, the store read-only) and
writes into `--figures`:

- `curves-SEED.png`: niches filled and QD score against evaluations, one line per arm (the mean
  over random seeds) with the band between the lowest and highest seed;
- `archive-ARM-SEED-sN.png`: the final archive of each run (`elmjax.viz.heatmaps`);
- `stage1.md`: a table of every run (budget, evaluations, niches, QD score, best fitness, valid
  share, diff apply failures, wall time) and a table per arm x seed at equal evaluations;
- `stage1.json`: the same figures, machine-readable, with each run's whole curve and final
  elites: the **ledger**.

Run directories do not outlive the machine they ran on, so the ledger is what keeps a run: a
report merges the runs found under `--out` into the ledger already in `--figures` (a run on
disk replaces its ledger entry unless the ledger holds more of it), and redraws curves and
archives from the ledger. Runs recorded before the ledger kept curves have only their final
point: they count in the equal-evaluation tables at their budget only, appear as a marker on the
curves, and a seed whose runs all lack curves keeps the figure it has.
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
        "cpu": cpu_of(path),
        "curve": [
            [int(r["evaluations"]), int(r["num_filled"]), round(float(r["qd_score"]), 2)]
            for r in rows
        ],
        "curve_complete": True,
        "elites": final_elites(path),
    }


def cpu_of(path: Path) -> str | None:
    """The CPU a run started on, from its provenance (runs repeat exactly on one CPU only)."""
    try:
        cpu = json.loads((path / "provenance.json").read_text()).get("cpu")
    except (OSError, json.JSONDecodeError):
        return None
    return cpu["model"] if cpu else None


def final_elites(run_path: Path) -> list[list[float]]:
    """[fitness, *descriptor] of each elite of the run's final archive, from the store."""

    spec = stage1_spec(run_path)
    db = sqlite3.connect(f"file:{run_path / 'programs.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT program_id, fitness, descriptor FROM programs WHERE valid = 1 AND "
            "fitness IS NOT NULL AND entered = 1"
        ).fetchall()
    finally:
        db.close()
    if not rows:
        return []
    archive = archive_of(spec, [(p, f, json.loads(d)) for p, f, d in rows])
    filled = np.asarray(archive.program_id) >= 0
    return [
        [round(float(f), 3), *(round(float(x), 5) for x in d)]
        for f, d in zip(np.asarray(archive.fitness)[filled], np.asarray(archive.descriptor)[filled])
    ]


def archive_of(spec, elites: list[tuple[int, float, list[float]]]):
    """A MAP-Elites archive holding (program id, fitness, descriptor) candidates, inserted in
    one padded batch (a power of two, so few batch shapes compile)."""
    from elmjax import qd

    size = 1 << max(6, (len(elites) - 1).bit_length())
    fit = np.zeros(size, np.float32)
    desc = np.zeros((size, spec.dim), np.float32)
    valid = np.zeros(size, bool)
    pid = np.full(size, -1, np.int32)
    for i, (p, f, d) in enumerate(elites):
        fit[i], desc[i], valid[i], pid[i] = f, d, True, p
    archive, _ = qd.insert(qd.init(spec), fit, desc, valid, pid)
    return archive


def stage1_spec(run_path: Path | None = None):
    """The archive's grid: the run's own config, or stage1.yaml's for a run known from the
    ledger only (every stage-1 arm shares that grid)."""
    from elmjax.config import load_config
    from elmjax.run_dir import grid_spec, load_run_config, make_environment

    if run_path is not None and (run_path / "config.yaml").exists():
        config = load_run_config(run_path)
    else:
        config = load_config(Path(__file__).resolve().parent / "configs" / "stage1.yaml")
    return grid_spec(config, make_environment(config))


def at_evaluations(run: dict, n: int) -> tuple[float, float] | None:
    """(niches, QD) of a run when it had spent n evaluations (None if it never got there, or
    if the ledger kept only its final point and that point is not the first at or past n)."""
    curve = run["curve"]
    ev = np.array([c[0] for c in curve])
    if ev[-1] < n:
        return None
    if not run.get("curve_complete", False):
        per_generation = run["evaluations"] / max(1, run["generations"])
        if ev[-1] - per_generation >= n:
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
        path = figures / f"curves-{seed}.png"
        seed_runs = [r for group in by_seed[seed].values() for r in group]
        if path.exists() and not any(r.get("curve_complete") for r in seed_runs):
            print(f"[report] {path.name}: no run of {seed} has a curve in the ledger; kept")
            continue
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for arm in [a for a in ARM_ORDER if a in by_seed[seed]]:
            group = by_seed[seed][arm]
            whole = [r for r in group if r.get("curve_complete")]
            final_only = [r for r in group if not r.get("curve_complete")]
            budgets = sorted({r["budget"] for r in group})
            name = f"{arm} (n={len(group)}, budget {'/'.join(f'{b:,}' for b in budgets)})"
            if final_only:
                name += f"; {len(final_only)} final point(s) only"
            colour = None
            if whole:
                top = max(r["curve"][-1][0] for r in whole)
                grid = np.linspace(0, top, 200)
            for k, ax in enumerate(axes):
                if whole:
                    # a run counts at x only while it has data there (partial runs end early)
                    ys = np.array(
                        [
                            np.where(
                                grid <= r["curve"][-1][0],
                                np.interp(
                                    grid,
                                    [c[0] for c in r["curve"]],
                                    [c[1 + k] for c in r["curve"]],
                                ),
                                np.nan,
                            )
                            for r in whole
                        ]
                    )
                    (line,) = ax.plot(grid, np.nanmean(ys, 0), color=colour, label=name)
                    colour = line.get_color()
                    ax.fill_between(
                        grid, np.nanmin(ys, 0), np.nanmax(ys, 0), color=colour, alpha=0.2
                    )
                if final_only:
                    points = ax.scatter(
                        [r["curve"][-1][0] for r in final_only],
                        [r["curve"][-1][1 + k] for r in final_only],
                        marker="x",
                        color=colour,
                        label=None if whole else name,
                    )
                    colour = points.get_facecolor()[0] if colour is None else colour
                ax.set_xlabel("evaluations")
                ax.set_ylabel(("niches filled", "QD score")[k])
        axes[0].set_title(f"{seed}: niches filled (of 1,728)")
        axes[1].set_title(f"{seed}: QD score")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        out.append(path)
    return out


def plot_archive(run: dict, figures: Path) -> Path | None:
    """The final archive of a run, from its elites in the ledger (kept as is if it has none)."""
    from elmjax.viz.heatmaps import plot_archive as draw

    elites = run.get("elites")
    if not elites:
        return None
    archive = archive_of(stage1_spec(), [(i, f, d) for i, (f, *d) in enumerate(elites)])
    return draw(archive, path=figures / f"archive-{run['run']}.png", title=run["run"])


def fmt(value: float | None, spec: str) -> str:
    """A figure, or "n/r" where the ledger has none (entries written by hand from a lost run)."""
    return "n/r" if value is None else format(value, spec)


def run_table(runs: list[dict]) -> str:
    lines = [
        "| run | model | budget | evaluations | niches | QD score | best | valid | diff apply "
        "failures | wall time | CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        part = "" if r["finished"] else " (partial)"
        applied = fmt(r["apply_failures"], ".1%") if r["run"].startswith("diff") else "-"
        lines.append(
            f"| {r['run']}{part} | {r['model'] or '-'} | {r['budget']:,} | {r['evaluations']:,} | "
            f"{r['niches']} | {r['qd_score']:,.0f} | {fmt(r['max_fitness'], '.1f')} | "
            f"{r['valid_rate']:.1%} | {applied} | {r['wall_seconds'] / 60:.1f} min | "
            f"{(r.get('cpu') or 'n/r').split(' (')[0]} |"
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
        value = at_evaluations(r, equal)
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
    if not groups:
        lines.append("| (no run in the ledger has a curve point here) | | | | |")
    return "\n".join(lines) + "\n"


def read_ledger(figures: Path) -> dict[str, dict]:
    """Every run the ledger (`stage1.json`) holds, by name. Entries written before it kept
    curves get their final point as a one-point curve."""
    path = figures / "stage1.json"
    if not path.exists():
        return {}
    return {r["run"]: r for r in read_ledger_entries(json.loads(path.read_text()))}


def read_ledger_entries(entries: list[dict]) -> list[dict]:
    for r in entries:
        if "curve" not in r:
            r["curve"] = [[r["evaluations"], r["niches"], r["qd_score"]]]
            r["curve_complete"] = False
    return entries


def merge(ledger: dict[str, dict], found: list[dict]) -> dict[str, dict]:
    """The ledger with the runs found on disk. A run on disk replaces its entry, except when
    the entry holds more of it (a run started again on a new machine that has not caught up)
    or the same number of evaluations with other figures (the same config and seed run on
    another CPU: the recorded run is the one the results cite). Both are said."""
    merged = dict(ledger)
    for r in found:
        old = ledger.get(r["run"])
        if old is not None and old["evaluations"] > r["evaluations"]:
            print(
                f"[report] {r['run']}: on disk at {r['evaluations']:,} evaluations, the ledger "
                f"holds {old['evaluations']:,}: ledger kept"
            )
            continue
        if old is not None and old["evaluations"] == r["evaluations"]:
            if (old["niches"], round(old["qd_score"], 1)) != (r["niches"], round(r["qd_score"], 1)):
                print(
                    f"[report] {r['run']}: re-run to {r['evaluations']:,} evaluations DIFFERS "
                    f"from the ledger ({old['niches']} niches, QD {old['qd_score']:,.1f} on "
                    f"{old.get('cpu') or 'an unrecorded CPU'}; {r['niches']}, "
                    f"{r['qd_score']:,.1f} on {r.get('cpu')}): ledger kept"
                )
                continue
            print(f"[report] {r['run']}: re-run reproduces the ledger")
        merged[r["run"]] = r
    return merged


def report(args) -> int:
    out, figures = Path(args.out), Path(args.figures)
    figures.mkdir(parents=True, exist_ok=True)
    found = (
        [s for p in sorted(out.iterdir()) if p.is_dir() and (s := run_summary(p))]
        if out.is_dir()
        else []
    )
    runs = list(merge(read_ledger(figures), found).values())
    runs.sort(
        key=lambda r: (
            ARM_ORDER.index(r["arm"]) if r["arm"] in ARM_ORDER else 9,
            SEED_ORDER.index(r["seed"]),
            r["random_seed"],
        )
    )
    if not runs:
        print(f"no stage-1 runs under {out} or in {figures / 'stage1.json'}")
        return 1
    plot_curves(runs, figures)
    for r in runs:
        if r["random_seed"] == 0:
            plot_archive(r, figures)
    budgets = {1000} | {r["budget"] for r in runs if r["finished"]}
    if any(r["arm"] == "prompt" for r in runs):
        budgets.add(100)  # where the (slow, often partial) prompt runs can be compared
    budgets = sorted(budgets)
    text = "\n".join([run_table(runs)] + [equal_table(runs, n) for n in budgets])
    (figures / "stage1.md").write_text(text)
    # one run per line: diffs of the ledger stay readable
    lines = ",\n".join(json.dumps(r, separators=(",", ":")) for r in runs)
    (figures / "stage1.json").write_text(f"[\n{lines}\n]\n")
    print(text)
    return 0
