"""The report's elite cards and its list of elites beyond the grid's range.

For each of a run's best elites (`elmjax.viz.report` picks them): its walker as a GIF (rerun in
the sandbox, animated with `walker_gif.render_gif`), its fitness and descriptor with their
units, what the operator did, the physical diagnostics its store row holds (`DIAGNOSTICS`;
skipped for runs that predate them), what changed from its parent as a unified diff (the ELM
paper's point: the model edits programs, so a reader wants the edit), and a red flag when its
descriptor lies beyond the grid's range, so that it was filed in an edge cell (`archive.insert`
clips). `clipped_section` lists every such elite.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from elmjax import run_dir as rd

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


def fitness_unit(config: Any) -> str:
    """What a fitness number means, in words and units."""
    if config.env.name == "sodarace":
        return f"units (|dx| over {config.env.seconds:g} s; 10 units = 1 m)"
    return ""


def fitness_label(config: Any) -> str:
    if config.env.name == "sodarace":
        return f"fitness: |dx| over {config.env.seconds:g} s (units)"
    return "fitness"


def report_top(config: Any) -> int:
    """How many of the best elites the report shows (`report_top`)."""
    return int(getattr(config, "report_top", 4))


def elites_section(data: dict[str, Any], config: Any, out: Path) -> str:
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
            f"<p>fitness {elite['fitness']:.2f} {html.escape(fitness_unit(config))}<br>"
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


def clipped_section(data: dict[str, Any]) -> str:
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


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"
