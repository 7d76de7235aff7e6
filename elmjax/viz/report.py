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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from elmjax import run_dir as rd

HEATMAPS_DIR = "heatmaps"
#: physical diagnostics of an evaluation (the physics' own result keys / store columns), with
#: how to show them; shown for an elite when its store row has them, skipped when not.
DIAGNOSTICS = (
    ("airborne_fraction", "airborne", "{:.0%} of frames"),
    ("peak_speed", "peak speed", "{:.1f} units/s"),
    ("bone_error", "bone error", "{:.2%} (largest relative length error)"),
    ("muscle_work", "muscle work", "{:.3g} per unit mass"),
)
#: clipped elites listed in the report at most (the count is always complete).
CLIPPED_ROWS = 50


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
        _guarded("Best walkers", notes, _elites_section, data, config, out),
        _guarded("Beyond the grid", notes, _clipped_section, data),
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
        parent_ids = {p for e in elites[: report_top(config)] for p in e["parents"][:1]}
        parents = {pid: store.get(pid) for pid in sorted(parent_ids)}
        for elite in elites[: report_top(config)]:
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


def report_top(config: Any) -> int:
    return int(getattr(config, "report_top", 4))


def diagnostics_of(record: Any) -> dict[str, float]:
    """The physical diagnostics a store row has (a column or a key of its extras); {} when the
    run predates them or its environment has none."""
    out: dict[str, float] = {}
    extras = getattr(record, "extras", None) or {}
    for key, _, _ in DIAGNOSTICS:
        value = getattr(record, key, None)
        if value is None:
            value = extras.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def clipped_axes(
    descriptor: Sequence[float], low: Sequence[float], high: Sequence[float]
) -> list[int]:
    """Axes on which a descriptor lies outside low..high (it was filed in the edge cell)."""
    return [d for d, (x, lo, hi) in enumerate(zip(descriptor, low, high)) if x < lo or x > hi]


def parent_diff(parent_text: str, text: str, parent_label: str, label: str) -> str:
    """Unified diff from the parent's program to the child's (empty when identical)."""
    import difflib

    return "".join(
        difflib.unified_diff(
            parent_text.splitlines(keepends=True),
            text.splitlines(keepends=True),
            fromfile=parent_label,
            tofile=label,
            n=2,
        )
    )


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
        ("best fitness", f"{last.get('max_fitness', float('nan')):.2f} {_fitness_unit(config)}"),
        ("valid (all candidates)", f"{last.get('valid_rate_total', float('nan')):.1%}"),
        ("wall clock", f"{last.get('elapsed', 0):.0f} s"),
        ("elmjax commit", str(provenance.get("elmjax", {}).get("commit"))),
        ("devices", ", ".join(provenance.get("devices", []))),
    ]
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<section><h2>Run</h2><table class=kv>{table}</table></section>"


def _fitness_unit(config: Any) -> str:
    """What a fitness number means, in words and units."""
    if config.env.name == "sodarace":
        return f"units (|dx| over {config.env.seconds:g} s; 10 units = 1 m)"
    return ""


def _fitness_label(config: Any) -> str:
    if config.env.name == "sodarace":
        return f"fitness: |dx| over {config.env.seconds:g} s (units)"
    return "fitness"


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
        fitness_label=_fitness_label(config),
        title="elites by cell",
    )
    imgs = f'<img src="{HEATMAPS_DIR}/{html.escape(image.name)}" alt="archive heatmap">'
    return f"<section><h2>Archive</h2>{imgs}</section>"


def _curves_section(metrics: list[dict[str, Any]], config: Any, out: Path) -> str:
    import matplotlib.pyplot as plt

    if not metrics:
        return "<section><h2>Progress</h2><p class=note>no generation logged yet</p></section>"
    evals = [m["evaluations"] for m in metrics]
    total = metrics[-1].get("num_cells") or round(
        metrics[-1]["num_filled"] / max(metrics[-1]["coverage"], 1e-12)
    )
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
    axes[1].set_ylabel("sum of elite fitness" + (" (units)" if _fitness_unit(config) else ""))
    axes[2].plot(evals, [m["max_fitness"] for m in metrics], color="#1f77b4")
    axes[2].set_title("best fitness")
    axes[2].set_ylabel(_fitness_label(config).removeprefix("fitness: "))
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


def _elites_section(data: dict[str, Any], config: Any, out: Path) -> str:
    top = data["elites"][: report_top(config)]
    if not top:
        return "<section><h2>Best walkers</h2><p class=note>no elite yet</p></section>"
    gifs = render_elite_gifs(top, config, out) if config.env.name == "sodarace" else {}
    names = data["descriptor_names"]
    units = data["descriptor_units"] or ("",) * len(names)
    spec = data["archive"].spec
    cards = []
    for rank, elite in enumerate(top):
        gif = gifs.get(elite["program_id"])
        media = f'<img src="{gif}" alt="walker {elite["program_id"]}">' if gif else ""
        desc = ", ".join(
            f"{n} {x:.1f}{' ' + u if u and u != 'mass units' else ''}"
            for n, x, u in zip(names, elite["descriptor"], units)
        )
        flag = ""
        if elite["clipped"]:
            flag = f"<p class=clipped>{html.escape(clipped_text(elite, names, spec))}</p>"
        diag = ""
        if elite["diagnostics"]:
            items = "".join(
                f"<li>{label}: {fmt.format(elite['diagnostics'][key])}</li>"
                for key, label, fmt in DIAGNOSTICS
                if key in elite["diagnostics"]
            )
            diag = f"<ul class=diag>{items}</ul>"
        cards.append(
            f"<div class=card><h3>#{rank + 1}: program {elite['program_id']}</h3>{media}"
            f"<p>fitness {elite['fitness']:.2f} {html.escape(_fitness_unit(config))}<br>"
            f"{html.escape(desc)} (cell {elite['cell']})<br>generation {elite['generation']}, "
            f"{html.escape(str(elite['operator']))}"
            f"{': ' + html.escape(str(elite['detail'])) if elite.get('detail') else ''}</p>"
            f"{flag}{diag}{_diff_block(elite)}"
            f"<details><summary>program text</summary><pre>{html.escape(elite['text'] or '')}"
            f"</pre></details></div>"
        )
    return f"<section><h2>Best walkers (top niches)</h2>{''.join(cards)}</section>"


def clipped_text(elite: dict[str, Any], names: Sequence[str], spec: Any) -> str:
    """ "clipped: height 71.0 is above the grid's 0-60, filed in the 55-60+ bin"."""
    from elmjax.viz.heatmaps import bin_label

    parts = []
    for d in elite["clipped"]:
        x, lo, hi = elite["descriptor"][d], spec.low[d], spec.high[d]
        n = spec.shape[d] if hasattr(spec, "shape") else 1
        where = "above" if x > hi else "below"
        edge = bin_label(lo, hi, n, n - 1 if x > hi else 0)
        parts.append(f"{names[d]} {x:.1f} is {where} the grid's {lo:g}-{hi:g} (in the {edge} bin)")
    return "clipped: " + "; ".join(parts)


def _diff_block(elite: dict[str, Any]) -> str:
    parent = elite.get("parent")
    if not elite["parents"]:
        return "<p class=note>a seed program: no parent</p>"
    if parent is None:
        return f"<p class=note>parent {elite['parents'][0]} is not in the store</p>"
    diff = parent_diff(
        parent["text"] or "",
        elite["text"] or "",
        f"program {parent['program_id']} (parent, fitness {_fmt(parent['fitness'])})",
        f"program {elite['program_id']}",
    )
    others = elite["parents"][1:]
    more = f" (also parent: {', '.join(map(str, others))})" if others else ""
    if not diff:
        return f"<p>same text as its parent {parent['program_id']}{more}</p>"
    lines = []
    for line in diff.splitlines():
        cls = ""
        if line.startswith("+") and not line.startswith("+++"):
            cls = "add"
        elif line.startswith("-") and not line.startswith("---"):
            cls = "del"
        elif line.startswith("@@"):
            cls = "hunk"
        text = html.escape(line)
        lines.append(f"<span class={cls}>{text}</span>" if cls else text)
    return (
        f"<details open><summary>diff against parent {parent['program_id']}{more}</summary>"
        f"<pre class=diff>{chr(10).join(lines)}</pre></details>"
    )


def _clipped_section(data: dict[str, Any]) -> str:
    clipped = [e for e in data["elites"] if e["clipped"]]
    if data["archive"] is None:
        return ""
    spec = data["archive"].spec
    names = data["descriptor_names"]
    ranges = ", ".join(f"{n} {lo:g}-{hi:g}" for n, lo, hi in zip(names, spec.low, spec.high))
    head = (
        "<section><h2>Elites beyond the grid's range</h2><p>The grid spans "
        f"{html.escape(ranges)}; a descriptor beyond a bound is filed in the edge cell (the "
        "open-ended bins, marked + on the heatmaps).</p>"
    )
    if not clipped:
        return head + "<p>None: every elite lies inside the grid's range.</p></section>"
    rows = "".join(
        f"<tr><td>{e['program_id']}</td><td>{e['cell']}</td><td>{e['fitness']:.2f}</td>"
        f"<td>{html.escape(', '.join(f'{x:.1f}' for x in e['descriptor']))}</td>"
        f"<td class=clipped>{html.escape(clipped_text(e, names, spec))}</td></tr>"
        for e in clipped[:CLIPPED_ROWS]
    )
    more = ""
    if len(clipped) > CLIPPED_ROWS:
        more = f"<p>... and {len(clipped) - CLIPPED_ROWS} more (best {CLIPPED_ROWS} shown)</p>"
    return (
        f"{head}<p>{len(clipped)} elite(s):</p><table><tr><th>program</th><th>cell</th>"
        f"<th>fitness</th><th>{html.escape(', '.join(names))}</th><th>clipped</th></tr>"
        f"{rows}</table>{more}</section>"
    )


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
