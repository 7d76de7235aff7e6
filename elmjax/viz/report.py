"""`elmjax report RUN_DIR`: a self-contained HTML page that shows what a run found.

`RUN_DIR/report/index.html` opens from disk with no server: every asset is a relative path to a
file next to it (PNG, GIF) and nothing loads from the network. It shows

- the run's headline figures (evaluations, coverage, QD score, max fitness, validity, status);
- archive heatmaps (`elmjax.viz.heatmaps`: height x width per mass slice, max over mass);
- coverage, QD score and max fitness against evaluations (from `metrics.jsonl`);
- the best walker of each of the top niches as a GIF (`elmjax.viz.walker_gif.render_gif`);
- the program text of those elites, and the lineage of the best one back to its seed;
- operator statistics: candidates, validity, archive entries and error kinds per operator.

Everything is read from the run directory (store, metrics, config), so a report can be rebuilt
for a killed or finished run at any time, and the loop calls `write_report` at the end of a run.
A piece that cannot be drawn (no valid walker yet, a GIF renderer error) leaves a note on the
page instead of failing the report.
"""

from __future__ import annotations

import argparse
import html
import json
import shutil
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from elmjax import run_dir as rd

HEATMAPS_DIR = "heatmaps"


def report_command(args: argparse.Namespace) -> int:
    path = Path(args.run_dir)
    if not (path / rd.CONFIG).exists():
        print(f"elmjax report: {path} is not a run directory (no {rd.CONFIG})", file=sys.stderr)
        return 1
    index = write_report(path)
    print(f"elmjax: report: {index}")
    return 0


def write_report(run_path: str | Path) -> Path:
    """Write `RUN_DIR/report/` (index.html + assets) and return the index path."""
    import matplotlib

    matplotlib.use("Agg")
    from elmjax.run_dir import load_run_config, read_metrics

    run_path = Path(run_path)
    out = run_path / rd.REPORT
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    config = load_run_config(run_path)
    metrics = read_metrics(run_path)
    data = load_run_data(run_path, config)
    notes: list[str] = []
    sections = [
        _summary_section(config, metrics, data, run_path),
        _guarded("Archive", notes, _heatmap_section, data, config, out),
        _guarded("Progress", notes, _curves_section, metrics, out),
        _guarded("Best walkers", notes, _elites_section, data, config, out),
        _guarded("Lineage", notes, _lineage_section, data),
        _guarded("Operators", notes, _operator_section, data),
    ]
    page = _PAGE.format(
        title=html.escape(f"elmjax run {run_path.name}"),
        body="\n".join(sections),
        notes="".join(f"<li>{html.escape(n)}</li>" for n in notes),
    )
    index = out / "index.html"
    index.write_text(page)
    return index


# -- data ---------------------------------------------------------------------------------------


def load_run_data(run_path: Path, config: Any) -> dict[str, Any]:
    """The final archive (last checkpoint + store replay), its elites best first, operator
    statistics and the lineage of the best elite, all from the run directory."""
    import numpy as np

    with rd.open_run(run_path, config) as run:
        window, _ = run.rebuild_window()
        env, store = run.env, run.store
        archive = window[max(window)] if window else None
        elites: list[dict[str, Any]] = []
        if archive is not None:
            ids = np.asarray(archive.program_id)
            for cell in np.flatnonzero(ids >= 0):
                rec = store.get(int(ids[cell]))
                elites.append(
                    {
                        "program_id": rec.program_id,
                        "fitness": float(np.asarray(archive.fitness)[cell]),
                        "descriptor": [float(x) for x in np.asarray(archive.descriptor)[cell]],
                        "cell": int(cell),
                        "generation": rec.generation,
                        "operator": rec.operator,
                        "text": rec.text,
                    }
                )
        elites.sort(key=lambda e: (-e["fitness"], e["program_id"]))
        lineage = store.lineage(elites[0]["program_id"]) if elites else []
        return {
            "archive": archive,
            "descriptor_names": tuple(env.descriptor_space.names),
            "elites": elites,
            "operators": operator_stats(run_path / rd.STORE),
            "lineage": [
                {
                    "generation": r.generation,
                    "program_id": r.program_id,
                    "operator": r.operator,
                    "fitness": r.fitness,
                    "entered": r.entered,
                }
                for r in lineage
            ],
            "evaluations": len(store),
        }


def operator_stats(store_path: Path) -> dict[str, dict[str, Any]]:
    """Per operator: candidates, valid, entered the archive, and error counts by kind."""
    import sqlite3

    db = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)
    try:
        stats: dict[str, dict[str, Any]] = {}
        for op, n, valid, entered in db.execute(
            "SELECT COALESCE(operator, '?'), COUNT(*), SUM(valid), SUM(entered) "
            "FROM programs GROUP BY 1"
        ):
            stats[op] = {
                "candidates": n,
                "valid": valid or 0,
                "entered": entered or 0,
                "errors": {},
            }
        for op, kind, n in db.execute(
            "SELECT COALESCE(operator, '?'), outcome_kind, COUNT(*) FROM programs "
            "WHERE outcome_kind != 'ok' GROUP BY 1, 2"
        ):
            stats[op]["errors"][kind] = n
        return stats
    finally:
        db.close()


# -- sections -----------------------------------------------------------------------------------


def _guarded(title: str, notes: list[str], fn: Any, *args: Any) -> str:
    try:
        return fn(*args)
    except Exception as err:  # a report is best effort section by section
        notes.append(f"{title}: could not be drawn ({type(err).__name__}: {err})")
        traceback.print_exc(file=sys.stderr)
        return (
            f"<section><h2>{html.escape(title)}</h2><p class=note>not available: "
            f"{html.escape(str(err))}</p></section>"
        )


def _summary_section(
    config: Any, metrics: list[dict[str, Any]], data: dict[str, Any], run_path: Path
) -> str:
    last = metrics[-1] if metrics else {}
    provenance = {}
    if (run_path / rd.PROVENANCE).exists():
        provenance = json.loads((run_path / rd.PROVENANCE).read_text())
    rows = [
        ("environment", _env_label(config)),
        ("operator", _operator_label(config)),
        ("seed programs", ", ".join(config.seed_programs)),
        ("evaluations", f"{data['evaluations']}"),
        ("generations", f"{last.get('generation', -1) + 1}"),
        ("coverage", f"{last.get('coverage', 0):.1%} ({last.get('num_filled', 0)} cells)"),
        ("QD score", f"{last.get('qd_score', 0):.3f}"),
        ("max fitness", f"{last.get('max_fitness', float('nan')):.3f}"),
        ("valid (all candidates)", f"{last.get('valid_rate_total', float('nan')):.1%}"),
        ("wall clock", f"{last.get('elapsed', 0):.0f} s"),
        ("elmjax commit", str(provenance.get("elmjax", {}).get("commit"))),
        ("devices", ", ".join(provenance.get("devices", []))),
    ]
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<section><h2>Run</h2><table class=kv>{table}</table></section>"


def _env_label(config: Any) -> str:
    if config.env.name == "sodarace":
        return f"sodarace ({config.env.terrain} terrain, {config.env.seconds:g} simulated s)"
    return config.env.name


def _operator_label(config: Any) -> str:
    m = config.mutation
    if m.operator == "gp":
        return "gp (no model)"
    return f"{m.operator}, model {m.model}, temperature {m.temperature:g}"


def _heatmap_section(data: dict[str, Any], config: Any, out: Path) -> str:
    from elmjax.viz import heatmaps

    if data["archive"] is None:
        return "<section><h2>Archive</h2><p class=note>no generation committed yet</p></section>"
    image = heatmaps.plot_archive(
        data["archive"],
        path=out / HEATMAPS_DIR / "archive.png",
        names=data["descriptor_names"],
        title=f"elites by cell (fitness colour; {data['archive'].spec.shape} grid)",
    )
    imgs = f'<img src="{HEATMAPS_DIR}/{html.escape(image.name)}" alt="archive heatmap">'
    return f"<section><h2>Archive</h2>{imgs}</section>"


def _curves_section(metrics: list[dict[str, Any]], out: Path) -> str:
    import matplotlib.pyplot as plt

    if not metrics:
        return "<section><h2>Progress</h2><p class=note>no generation logged yet</p></section>"
    evals = [m["evaluations"] for m in metrics]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, key, label in zip(
        axes,
        ("coverage", "qd_score", "max_fitness"),
        ("coverage (share of cells filled)", "QD score", "max fitness"),
    ):
        ax.plot(evals, [m[key] for m in metrics], color="#1f77b4")
        ax.set_xlabel("evaluations")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=90)
    plt.close(fig)
    return '<section><h2>Progress</h2><img src="curves.png" alt="progress curves"></section>'


def _elites_section(data: dict[str, Any], config: Any, out: Path) -> str:
    top = data["elites"][: config.report_top]
    if not top:
        return "<section><h2>Best walkers</h2><p class=note>no elite yet</p></section>"
    gifs = render_elite_gifs(top, config, out) if config.env.name == "sodarace" else {}
    cards = []
    for rank, elite in enumerate(top):
        gif = gifs.get(elite["program_id"])
        media = f'<img src="{gif}" alt="walker {elite["program_id"]}">' if gif else ""
        desc = ", ".join(f"{x:.2f}" for x in elite["descriptor"])
        cards.append(
            f"<div class=card><h3>#{rank + 1}: program {elite['program_id']}</h3>{media}"
            f"<p>fitness {elite['fitness']:.3f} | cell {elite['cell']} | descriptor ({desc})"
            f" | generation {elite['generation']} | {html.escape(str(elite['operator']))}</p>"
            f"<details><summary>program text</summary><pre>{html.escape(elite['text'] or '')}"
            f"</pre></details></div>"
        )
    return f"<section><h2>Best walkers (top niches)</h2>{''.join(cards)}</section>"


def render_elite_gifs(elites: Sequence[dict[str, Any]], config: Any, out: Path) -> dict[int, str]:
    """GIF per elite (program id -> relative path): rerun the program in the sandbox, animate."""
    from elmjax.evaluation import sandbox_programs
    from elmjax.viz.walker_gif import render_gif

    results = sandbox_programs(
        [e["text"] for e in elites],
        rd.make_environment(config),
        [rd.program_seed(config.seed, e["program_id"]) for e in elites],
    )
    (out / "walkers").mkdir(exist_ok=True)
    paths = {}
    for elite, result in zip(elites, results):
        if not result.ok:
            continue
        name = f"walkers/program_{elite['program_id']}.gif"
        render_gif(
            result.value,
            out / name,
            terrain=config.env.terrain,
            seconds=config.env.seconds,
            fps=10,
            title=f"program {elite['program_id']}: fitness {elite['fitness']:.2f}",
        )
        paths[elite["program_id"]] = name
    return paths


def _lineage_section(data: dict[str, Any]) -> str:
    lineage = data["lineage"]
    if not lineage:
        return "<section><h2>Lineage</h2><p class=note>no elite yet</p></section>"
    rows = "".join(
        f"<tr><td>{r['generation']}</td><td>{r['program_id']}</td>"
        f"<td>{html.escape(str(r['operator']))}</td><td>{_fmt(r.get('fitness'))}</td>"
        f"<td>{'yes' if r.get('entered') else ''}</td></tr>"
        for r in lineage
    )
    return (
        "<section><h2>Lineage of the best elite</h2><p>from the elite (top) back to its seed"
        "</p><table><tr><th>generation</th><th>program</th><th>operator</th><th>fitness</th>"
        f"<th>entered archive</th></tr>{rows}</table></section>"
    )


def _operator_section(data: dict[str, Any]) -> str:
    rows = []
    for op, s in sorted(data["operators"].items()):
        n = max(1, s["candidates"])
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(s.get("errors", {}).items())) or "-"
        rows.append(
            f"<tr><td>{html.escape(op)}</td><td>{s['candidates']}</td>"
            f"<td>{s['valid'] / n:.1%}</td><td>{s['entered']} ({s['entered'] / n:.1%})</td>"
            f"<td>{html.escape(errors)}</td></tr>"
        )
    return (
        "<section><h2>Operators</h2><table><tr><th>operator</th><th>candidates</th>"
        "<th>valid</th><th>entered archive</th><th>errors by kind</th></tr>"
        f"{''.join(rows)}</table></section>"
    )


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1300px; color: #222; }}
h1 {{ font-size: 1.5em; }} h2 {{ border-bottom: 1px solid #ccc; margin-top: 1.6em; }}
img {{ max-width: 100%; margin: 4px; border: 1px solid #eee; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ddd; padding: 3px 8px; }}
table.kv th {{ text-align: left; background: #f6f6f6; }}
.card {{ display: inline-block; vertical-align: top; width: 400px; margin: 6px; }}
.card img {{ width: 390px; }} pre {{ font-size: 11px; max-height: 400px; overflow: auto;
  background: #f8f8f8; padding: 6px; }}
.note {{ color: #a60; }}
</style></head>
<body><h1>{title}</h1>
{body}
<ul class=note>{notes}</ul>
</body></html>
"""
