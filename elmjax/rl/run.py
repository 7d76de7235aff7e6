"""A stage-3 run directory from start (or resume) to `eval.json`: the Python API of `elmjax rl`.

```
RUN_DIR/config.yaml        the RLConfig (resume reads it back)
RUN_DIR/provenance.json    code, libraries, devices, the model bundle and its sha256, physics
RUN_DIR/checkpoints/       orbax: trained parameters, optimizer state, step, rollbacks
RUN_DIR/metrics.jsonl, tb/ one row per PPO step (and one per rollback), TensorBoard scalars
RUN_DIR/before.json        the step-0 matrices and the baselines (computed once, kept on resume)
RUN_DIR/eval.json          terrains, before, after, ... (rewritten by every run and resume)
RUN_DIR/eval/              reward_curve.png, typical-<terrain>.gif, programs.json
```

Everything that can refuse a run (terrain names, the model bundle, memory, the stage-1 run, a
resume that would change the recipe or the model) is checked before the first weight is read.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from elmjax.rl.config import RLConfig, load_config, resumed_config, save_config
from elmjax.rl.model_io import (
    RLSetupError,
    bundle_meta,
    check_memory,
    model_prompt,
    resolve_bundle,
    weights_file,
)

CONFIG = "config.yaml"
BEFORE = "before.json"
#: Files that say "an RL run lives here".
RUN_MARKERS = ("checkpoints", "metrics.jsonl")


def _provenance(config: RLConfig, bundle: Path) -> dict[str, Any]:
    from elmjax.config import RunConfig
    from elmjax.run_dir import provenance, sha256_of

    base = RunConfig()
    run_config = dataclasses.replace(
        base, seed=config.seed, env=dataclasses.replace(base.env, seconds=config.seconds)
    )
    weights = weights_file(bundle)
    model = {
        "name": config.model,
        "path": str(bundle),
        "sha256": sha256_of(weights) if weights is not None and weights.is_file() else None,
    }
    info = provenance(run_config, model, None)
    info["operator"] = "rl"
    info["stage"] = 3
    return info


def preflight(config: RLConfig) -> tuple[Path, str]:
    """Every check that needs no weights: (bundle dir, prompt). Raises RLSetupError."""
    from elmjax.lm.tokenizer import encode, load_tokenizer

    bundle = resolve_bundle(config.model)
    lm = bundle_meta(bundle).get("config") or {}
    prompt = model_prompt(bundle, config)
    try:
        tok = load_tokenizer(bundle / "tokenizer.json")
    except Exception as err:
        raise RLSetupError(f"{bundle}/tokenizer.json cannot be read: {err}") from None
    prompt_tokens = len(encode(tok, prompt))
    if prompt_tokens < 1:
        raise RLSetupError("the prompt is empty: set --set prompt=... (at least one token)")
    need = config.prefix_len + prompt_tokens + config.max_new_tokens
    if need > int(lm.get("max_seq_len") or need):
        raise RLSetupError(
            f"prefix_len + prompt + max_new_tokens = {need} tokens exceeds the model's "
            f"max_seq_len {lm['max_seq_len']}"
        )
    check_memory(config, lm, prompt_tokens)
    if config.stage1_run is not None and not (Path(config.stage1_run) / "programs.sqlite").exists():
        raise RLSetupError(
            f"stage1_run {config.stage1_run} holds no evolve run (no programs.sqlite)"
        )
    return bundle, prompt


def start(out: str | Path, config: RLConfig, force: bool = False) -> dict[str, Any]:
    """A new run in `out`: checks, then training to `config.steps`, then eval.json."""
    path = Path(out)
    if path.exists() and any((path / m).exists() for m in RUN_MARKERS) and not force:
        raise RLSetupError(
            f"{path} already holds an RL run; continue it with `elmjax rl --resume {path}` or "
            "pass --force to start over"
        )
    bundle, prompt = preflight(config)
    if force:
        from elmjax.run_dir import remove_entries

        remove_entries(path, (*RUN_MARKERS, "tb", BEFORE, "eval.json", "eval"))
    path.mkdir(parents=True, exist_ok=True)
    save_config(config, path / CONFIG)
    info = _provenance(config, bundle)
    from elmjax.run_dir import write_provenance

    write_provenance(path, info)
    return _run(path, config, bundle, prompt)


def resume(
    path: str | Path, steps: int | None = None, overrides: Iterable[str] = ()
) -> dict[str, Any]:
    """Continue the run in `path` to `steps` in total (default: its config's), then rewrite
    eval.json. Only `RESUMABLE_KEYS` may change; the model's weights must be the same."""
    path = Path(path)
    if not (path / CONFIG).exists():
        raise RLSetupError(f"{path} is not an RL run directory (no {CONFIG}); nothing to resume")
    overrides = list(overrides) + ([f"steps={steps}"] if steps is not None else [])
    config = resumed_config(load_config(path / CONFIG), overrides)
    bundle, prompt = preflight(config)
    info = _provenance(config, bundle)
    recorded = json.loads((path / "provenance.json").read_text()).get("model", {})
    if recorded.get("sha256") and recorded["sha256"] != info["model"]["sha256"]:
        raise RLSetupError(
            f"the model bundle {bundle} has changed since the run started (sha256 "
            f"{recorded['sha256'][:12]} -> {str(info['model']['sha256'])[:12]}); resume needs "
            "the same stage-2 weights"
        )
    save_config(config, path / CONFIG)
    from elmjax.run_dir import write_provenance

    write_provenance(path, info, resumed=True)
    return _run(path, config, bundle, prompt)


def _run(path: Path, config: RLConfig, bundle: Path, prompt: str) -> dict[str, Any]:
    from elmjax.lm.bundle import load_saved_model
    from elmjax.rl import evaluate
    from elmjax.rl.trainer import Trainer

    model = load_saved_model(bundle)
    trainer = Trainer(path, config, model, prompt)
    try:
        state = trainer.restore_or_start()
        before_path = path / BEFORE
        if before_path.exists():
            saved = json.loads(before_path.read_text())
            before, baselines = saved["before"], saved["baselines"]
        else:
            full = evaluate.conditional_matrix(trainer, trainer.fn.initial, "before")
            before = {k: full[k] for k in ("mean", "best", "valid")}
            baselines = {"stage2_unconditioned": evaluate.unconditioned(trainer)}
            if config.stage1_run:
                baselines["stage1"] = evaluate.stage1_baseline(config.stage1_run, config)
            before_path.write_text(json.dumps({"before": before, "baselines": baselines}))
        if config.stage1_run and "stage1" not in baselines:
            baselines["stage1"] = evaluate.stage1_baseline(config.stage1_run, config)
        state = trainer.train(state)
        after = evaluate.conditional_matrix(trainer, state.params, "after")
        report = evaluate.write_eval(path, config, state.step, before, after, baselines)
        (path / "eval").mkdir(exist_ok=True)
        programs = [
            {"conditioning": config.terrains[i // config.eval_samples], "text": text,
             "distance": dict(zip(config.terrains, map(float, after["distance"][i])))}
            for i, text in enumerate(after["texts"])
        ]  # fmt: skip
        (path / "eval" / "programs.json").write_text(json.dumps(programs, indent=1))
        evaluate.write_pictures(path, config, after)
        return report
    finally:
        trainer.close()
