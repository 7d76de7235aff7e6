"""`elmjax report RUN_DIR`: a self-contained HTML page that shows what a run found.

`RUN_DIR/report/index.html` opens from disk with no server: every asset is a relative path to a
file next to it (PNG, GIF) and nothing loads from the network. It shows

- the run's headline figures (evaluations, cells filled of the grid's total, QD score, best
  fitness with its unit, validity, status);
- archive heatmaps (`elmjax.viz.heatmaps`: height x width per mass slice, max over mass, with
  units, open-ended edge bins and clipped elites marked);
- cells filled, QD score, best fitness and the valid rate against evaluations (`metrics.jsonl`);
- the best walker of each of the top niches as a GIF (`elmjax.viz.walker_gif.render_gif`);
- for each of those elites: what changed from its parent (a unified diff, which is what a reader
  of an ELM run wants to see), the operator's own note, the physical diagnostics
  (`DIAGNOSTICS`, when the run's store has them) and the program text;
- the elites whose descriptor lies beyond the grid's range (`archive.insert` files them in the
  edge cell: a 71-unit body in the 55-60+ bin), flagged on their card and listed;
- the lineage of the best elite back to its seed;
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
from pathlib import Path
from typing import Any

from elmjax import run_dir as rd
from elmjax.viz import elites
from elmjax.viz.elites import clipped_axes, diagnostics_of, report_top

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
        _guarded("Progress", notes, _curves_section, metrics, config, out),
        _guarded("Best walkers", notes, elites.elites_section, data, config, out),
        _guarded("Beyond the grid", notes, elites.clipped_section, data),
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
            spec = archive.spec
            for cell in np.flatnonzero(ids >= 0):
                rec = store.get(int(ids[cell]))
                descriptor = [float(x) for x in np.asarray(archive.descriptor)[cell]]
                elites.append(
                    {
                        "program_id": rec.program_id,
                        "fitness": float(np.asarray(archive.fitness)[cell]),
                        "descriptor": descriptor,
                        "cell": int(cell),
                        "generation": rec.generation,
                        "operator": rec.operator,
                        "text": rec.text,
                        "parents": list(rec.parents or []),
                        "detail": (rec.extras or {}).get("detail"),
                        "diagnostics": diagnostics_of(rec),
                        "clipped": clipped_axes(descriptor, spec.low, spec.high),
                    }
                )
        elites.sort(key=lambda e: (-e["fitness"], e["program_id"]))
        top = elites[: report_top(config)]
        parent_ids = {p for e in top for p in e["parents"][:1]}
        parents = {pid: store.get(pid) for pid in sorted(parent_ids)}
        for elite in top:
            parent = parents.get(elite["parents"][0]) if elite["parents"] else None
            if parent is not None:
                elite["parent"] = {
                    "program_id": parent.program_id,
                    "fitness": parent.fitness,
                    "text": parent.text,
                }
        lineage = store.lineage(elites[0]["program_id"]) if elites else []
        space = env.descriptor_space
        return {
            "archive": archive,
            "descriptor_names": tuple(space.names),
            "descriptor_units": tuple(getattr(space, "units", ()) or ()),
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
    from elmjax.qd.metrics import coverage_text

    archive = data["archive"]
    total = archive.num_cells if archive is not None else int(last.get("num_cells", 0))
    clipped = [e for e in data["elites"] if e["clipped"]]
    rows = [
        ("environment", _env_label(config)),
        ("operator", _operator_label(config)),
        ("seed programs", ", ".join(config.seed_programs)),
        ("evaluations", f"{data['evaluations']:,}"),
        ("generations", f"{last.get('generation', -1) + 1}"),
        ("cells filled", coverage_text(len(data["elites"]), total)),
        (
            "elites beyond the grid's range",
            f"{len(clipped)} (filed in an edge cell; listed below)" if clipped else "none",
        ),
        ("QD score", f"{last.get('qd_score', 0):,.1f} (sum of elite fitness)"),
        (
            "best fitness",
            f"{last.get('max_fitness', float('nan')):.2f} {elites.fitness_unit(config)}",
        ),
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
        units=data["descriptor_units"] or None,
        fitness_label=elites.fitness_label(config),
        title="elites by cell",
    )
    imgs = f'<img src="{HEATMAPS_DIR}/{html.escape(image.name)}" alt="archive heatmap">'
    return f"<section><h2>Archive</h2>{imgs}</section>"


def _curves_section(metrics: list[dict[str, Any]], config: Any, out: Path) -> str:
    import matplotlib.pyplot as plt

    from elmjax.qd.metrics import row_cells

    if not metrics:
        return "<section><h2>Progress</h2><p class=note>no generation logged yet</p></section>"
    evals = [m["evaluations"] for m in metrics]
    total = row_cells(metrics[-1])
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    cells = axes[0]
    cells.plot(evals, [m["num_filled"] for m in metrics], color="#1f77b4")
    cells.set_title(f"cells filled (of {total:,})")
    cells.set_ylabel("cells")
    share = cells.secondary_yaxis(
        "right", functions=(lambda c: 100 * c / total, lambda p: p * total / 100)
    )
    share.set_ylabel("% of the grid")
    axes[1].plot(evals, [m["qd_score"] for m in metrics], color="#1f77b4")
    axes[1].set_title("QD score")
    axes[1].set_ylabel("sum of elite fitness" + (" (units)" if elites.fitness_unit(config) else ""))
    axes[2].plot(evals, [m["max_fitness"] for m in metrics], color="#1f77b4")
    axes[2].set_title("best fitness")
    axes[2].set_ylabel(elites.fitness_label(config).removeprefix("fitness: "))
    axes[3].plot(
        evals,
        [100 * m["valid_rate"] for m in metrics],
        color="#bbbbbb",
        lw=0.8,
        label="each generation",
    )
    axes[3].plot(
        evals,
        [100 * m["valid_rate_total"] for m in metrics],
        color="#1f77b4",
        label="all candidates so far",
    )
    axes[3].set_title("valid candidates")
    axes[3].set_ylabel("% of candidates")
    axes[3].set_ylim(0, 100)
    axes[3].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("evaluations")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=80)
    plt.close(fig)
    return '<section><h2>Progress</h2><img src="curves.png" alt="progress curves"></section>'


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
.clipped {{ color: #b00; font-weight: bold; }}
pre.diff {{ font-size: 11px; }} .add {{ color: #070; background: #eaffea; }}
.del {{ color: #a00; background: #ffecec; }} .hunk {{ color: #558; }}
ul.diag {{ margin: 0; padding-left: 1.2em; font-size: 13px; }}
</style></head>
<body><h1>{title}</h1>
{body}
<ul class=note>{notes}</ul>
</body></html>
"""
