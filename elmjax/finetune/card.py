"""MODEL_CARD.md of a stage-2 model: what it is, what it learned from, how it scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from elmjax.finetune.prompts import HEADER


def _fmt(value: Any, spec: str = ".3f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def card_text(name: str, meta: dict[str, Any], result: dict[str, Any] | None) -> str:
    cfg, data = meta["config"], meta["dataset"]
    training = meta.get("training", {})
    cond = cfg["conditioned"]
    prompt = f"{HEADER}: height H, width W, mass M" if cond else HEADER
    lines = [
        f"# {name}",
        "",
        "A stage-2 model of elmjax (the ELM paper's section 5): it writes a whole Sodarace walker "
        "program from a short prompt, trained on the programs ELM runs found.",
        "",
        f"- Prompt: `{prompt}` and a newline; the model writes `def make_walker(): ...` and ends "
        "with its end-of-text token (`elmjax.finetune.prompts.program_prompt`).",
        f"- Base: {meta['base']['source'] or cfg['base']}"
        + (f", LoRA rank {cfg['lora_rank']} (merged)" if cfg["lora_rank"] else ""),
        f"- Use it: `elmjax evolve --model {name} --operator prompt`, `elmjax rl --model "
        f"{name}`, or `elmjax.lm.load_model(PATH)` with the prompt above.",
        "",
        "## Data",
        "",
        f"Programs within {cfg['within']:.0%} of their niche's best fitness (best over all runs "
        f"below), de-duplicated by syntax tree, {cfg['holdout']:.0%} held out; lineages of "
        f"{', '.join(cfg['exclude_lineages'])} excluded.",
        "",
        f"- runs: {', '.join(meta['runs'])}",
        f"- within the cut-off of their run's niche best: {data['candidates']:,}; of the best "
        f"over all runs: {data.get('within_cutoff', '-')}; duplicates: "
        f"{data['duplicates']:,}; excluded lineages: {data['excluded_lineage']:,}",
        f"- train: {data['train']:,} programs ({data.get('too_long', 0)} dropped as longer than "
        f"{cfg['seq_len']} tokens); held out: {data['held_out']:,}; niches: {data['niches']}",
        "",
        "## Training",
        "",
        f"- {training.get('steps_done', 0)} of {cfg['steps']} steps, batch {cfg['batch_size']}, "
        f"peak lr {cfg['lr']}, seed {cfg['seed']}; {training.get('parameters', 0):,} parameters",
        f"- final training loss {_fmt(training.get('final_loss'))} (`train_log.jsonl`, `tb/`)",
    ]
    if result is not None:
        ood = result["ood"]
        lines += [
            "",
            "## Evaluation (`eval.json`)",
            "",
            "| figure | value |",
            "|---|---|",
            f"| held-out loss (nats/token) | {_fmt(result['held_out_loss'])} |",
            f"| samples | {result['samples']:,} |",
            f"| niches filled (of {result['num_cells']:,}) | {result['niches_filled']} |",
            f"| QD score | {_fmt(result['qd_score'], '.1f')} |",
            f"| valid | {result['valid_fraction']:.1%} |",
            f"| novel (valid, not in the training set) | {result['novel_fraction']:.1%} |",
        ]
        if result.get("niche_hit_fraction") is not None:
            lines.append(f"| landed in the asked niche | {result['niche_hit_fraction']:.1%} |")
        lines += [
            f"| OOD completion, best of {result['config']['ood_samples']} / original: wheel, "
            f"galloper, runner, mean | {ood['wheel']:.2f}, {ood['galloper']:.2f}, "
            f"{ood['runner']:.2f}, {ood['mean']:.2f} |",
            "",
            f"Load average during the evaluation: {result.get('load_average')}.",
        ]
    return "\n".join(lines) + "\n"


def write_card(out: Path, meta: dict[str, Any], result: dict[str, Any] | None) -> Path:
    path = Path(out) / "MODEL_CARD.md"
    path.write_text(card_text(Path(out).name, meta, result))
    return path
