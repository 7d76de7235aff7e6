"""The whole stage-2 job: dataset, training, evaluation, and what MODEL_DIR holds afterwards.

```
MODEL_DIR/
  config.json, model.safetensors, tokenizer.json   an elmjax model directory: loads with
                                                   `elmjax evolve --model MODEL_DIR` and
                                                   `elmjax rl --model MODEL_DIR`
  MODEL_CARD.md      what the model is, its data, training and evaluation
  finetune.json      the job's config, dataset fingerprint and training summary
  eval.json          niches_filled, qd_score, valid_fraction, novel_fraction, ood, ...
  data/              train.jsonl, held_out.jsonl, dataset.json (the programs, with provenance)
  checkpoints/       orbax checkpoints of the training (rerunning the job resumes exactly)
  train_log.jsonl, tb/   loss, learning rate, gradient norm per logged step; TensorBoard
```

Rerunning the same command continues a stopped job (training from its last checkpoint, then the
evaluation); a MODEL_DIR made from other runs or another training config is refused unless
`force`. Only the evaluation keys (samples, temperature, ...) may differ between the calls.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from elmjax.finetune.card import write_card
from elmjax.finetune.config import FinetuneConfig
from elmjax.finetune.dataset import (
    Dataset,
    DatasetError,
    build_dataset,
    read_dataset,
    write_dataset,
)
from elmjax.finetune.training import (
    CHECKPOINTS,
    TENSORBOARD,
    TRAIN_LOG,
    base_model,
    read_train_log,
    run_training,
    tokenize,
)
from elmjax.run_dir import remove_entries

FINETUNE_JSON = "finetune.json"
EVAL_JSON = "eval.json"
DATA = "data"
#: keys that only change the evaluation (or how long one call trains): free between calls.
EVAL_KEYS = (
    "samples",
    "ood_samples",
    "temperature",
    "top_p",
    "max_new_tokens",
    "sample_batch",
    "time_limit",
)
_MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "MODEL_CARD.md",
    EVAL_JSON,
    FINETUNE_JSON,
    TRAIN_LOG,
)


class FinetuneError(RuntimeError):
    """A stage-2 job that cannot run as asked (the message says why and what to do)."""


def _training_keys(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k not in EVAL_KEYS}


def _read_meta(out: Path) -> dict[str, Any] | None:
    path = out / FINETUNE_JSON
    return json.loads(path.read_text()) if path.exists() else None


def _write_meta(out: Path, meta: dict[str, Any]) -> None:
    tmp = out / (FINETUNE_JSON + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, default=str))
    tmp.replace(out / FINETUNE_JSON)


def _prepare_dir(out: Path, cfg: FinetuneConfig, ds: Dataset, force: bool) -> None:
    meta = _read_meta(out)
    if meta is not None and not force:
        same = _training_keys(meta["config"]) == _training_keys(cfg.to_dict())
        if not same or meta["dataset"]["fingerprint"] != ds.fingerprint():
            raise FinetuneError(
                f"{out} holds a stage-2 model of another dataset or training config; "
                "pass --force to replace it, or choose another --out"
            )
        return
    if out.exists() and any(out.iterdir()):
        if not force and meta is None:
            raise FinetuneError(
                f"{out} exists and is not a stage-2 model directory; "
                "choose another --out (or --force to clear it)"
            )
        remove_entries(out, (CHECKPOINTS, TENSORBOARD, DATA, *_MODEL_FILES))
    out.mkdir(parents=True, exist_ok=True)


def finetune(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    cfg: FinetuneConfig,
    *,
    force: bool = False,
    evaluate: bool = True,
    stop_at: int | None = None,
    stream: TextIO | None = None,
) -> dict[str, Any] | None:
    """Build the dataset of `run_dirs`, train, save the model in `out`, evaluate it.

    Returns eval.json's content, or None when training stopped before `cfg.steps` (a time
    limit or `stop_at`; call again to continue). Raises DatasetError (refused runs or data)
    and FinetuneError before any training starts."""
    stream = stream or sys.stderr
    out = Path(out)
    ds = build_dataset(run_dirs, cfg)
    _prepare_dir(out, cfg, ds, force)
    write_dataset(ds, out / DATA)
    model = base_model(cfg)
    train_data, dropped = tokenize(model.tokenizer, ds.train, cfg)
    if len(train_data) < cfg.batch_size:
        raise DatasetError(
            f"runs {', '.join(map(str, run_dirs))}: {len(train_data)} training programs fit in "
            f"seq_len={cfg.seq_len} tokens ({dropped} longer dropped), fewer than one batch "
            f"({cfg.batch_size}); refused before training"
        )
    meta = {
        "config": cfg.to_dict(),
        "runs": [str(p) for p in run_dirs],
        "dataset": {
            **ds.stats,
            "fingerprint": ds.fingerprint(),
            "too_long": dropped,
            "train_examples": len(train_data),
            "seq_len_used": int(train_data.tokens.shape[1]),
        },
        "base": {"name": cfg.base, "source": model.source, "config": model.config.to_dict()},
        "prompt": {
            "header": "see elmjax.finetune.prompts.program_prompt",
            "conditioned": cfg.conditioned,
        },
        "status": "training",
    }
    _write_meta(out, meta)
    print(
        f"stage 2: {ds.stats['train']:,} training programs ({dropped} too long), "
        f"{ds.stats['held_out']:,} held out, {ds.stats['niches']} niches, from "
        f"{len(run_dirs)} run(s); training {cfg.steps} steps",
        file=stream,
        flush=True,
    )
    t0 = time.monotonic()
    trained, step = run_training(model, train_data, cfg, out, stop_at=stop_at, stream=stream)
    history = read_train_log(out)
    meta["training"] = {
        "steps_done": step,
        "steps": cfg.steps,
        "final_loss": history[-1]["loss"] if history else None,
        "seconds_this_call": time.monotonic() - t0,
        "parameters": _count_params(trained),
    }
    if step < cfg.steps:
        meta["status"] = "stopped"
        _write_meta(out, meta)
        print(f"stage 2: stopped at step {step} of {cfg.steps}; rerun to continue", file=stream)
        return None
    from elmjax.lm import save_model

    save_model(trained, out)
    meta["status"] = "trained"
    _write_meta(out, meta)
    write_card(out, meta, None)
    if not evaluate:
        return None
    return evaluate_dir(out, stream=stream, model=trained, dataset=ds)


def _count_params(model: Any) -> int:
    import jax
    from flax import nnx

    return int(sum(x.size for x in jax.tree.leaves(nnx.state(model.decoder, nnx.Param))))


def evaluate_dir(
    out: str | Path,
    *,
    overrides: dict[str, Any] | None = None,
    stream: TextIO | None = None,
    model: Any = None,
    dataset: Dataset | None = None,
) -> dict[str, Any]:
    """(Re)run the evaluation of a trained MODEL_DIR; writes eval.json and the model card.
    `overrides` may change only the evaluation keys (`EVAL_KEYS`)."""
    from elmjax.finetune.evaluate import evaluate_model

    stream = stream or sys.stderr
    out = Path(out)
    meta = _read_meta(out)
    if meta is None or not (out / "config.json").exists():
        raise FinetuneError(f"{out} holds no trained stage-2 model (no {FINETUNE_JSON} / weights)")
    bad = sorted(set(overrides or {}) - set(EVAL_KEYS))
    if bad:
        raise FinetuneError(f"--eval may change only {', '.join(EVAL_KEYS)}; not {', '.join(bad)}")
    cfg = FinetuneConfig.from_dict(meta["config"]).replace(overrides or {})
    if model is None:
        from elmjax.lm import load_saved_model

        model = load_saved_model(out)
    ds = dataset if dataset is not None else read_dataset(out / DATA)
    print(
        f"stage 2: evaluating {out} ({cfg.samples:,} samples, {cfg.ood_samples} OOD "
        "completions per walker)",
        file=stream,
        flush=True,
    )
    result = evaluate_model(model, ds, cfg)
    result = {"model_dir": str(out), "config": cfg.to_dict(), **result}
    (out / EVAL_JSON).write_text(json.dumps(result, indent=2))
    write_card(out, meta, result)
    print(
        f"stage 2: {result['niches_filled']} niches, QD {result['qd_score']:.1f}, valid "
        f"{result['valid_fraction']:.1%}, novel {result['novel_fraction']:.1%}, OOD mean "
        f"{result['ood']['mean']:.2f}, held-out loss {result['held_out_loss']:.3f} "
        f"-> {out / EVAL_JSON}",
        file=stream,
        flush=True,
    )
    return result
