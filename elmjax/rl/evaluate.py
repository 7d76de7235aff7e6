"""What `elmjax rl` measures: terrain x conditioning matrices, baselines, curves, pictures.

`RUN_DIR/eval.json`:

- `terrains`: the conditioning terrains, in `--terrains` order (rows and columns);
- `before`, `after`: `[c][t]` = mean distance toward terrain t's goal of `eval_samples`
  programs written under conditioning c, simulated on terrain t; a program that fails (does not
  run, invalid walker) counts as 0, so every entry is finite; `before` is the policy at step 0
  (the stage-2 model behind the untrained soft prompt), `after` the policy at `step`;
- `before_best`, `after_best`: the best single program's distance in each entry;
- `before_valid`, `after_valid`: the share of programs that ran and walked, per conditioning;
- `baselines.stage2_unconditioned`: the stage-2 model itself (no soft prompt) sampled
  `eval_samples` times: mean and best per terrain;
- `baselines.stage1` (with `stage1_run`): the archive's elites tried on every terrain: the best
  elite per terrain (`per_terrain_best`, a specialist chosen with hindsight) and the one elite
  with the best mean over the terrains (`single_walker`: the paper's "best single walker");
- `specialises`: each terrain's own conditioning does best on it (the diagonal holds the column
  maximum of `after`); `beats_single_walker`: the diagonal of `after` beats the single walker on
  every terrain (null without a stage-1 run).

Every program goes through `evaluation.sandbox_programs` once and `evaluation.score_results` on
each terrain: the same sandbox and simulator as `evolve`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from elmjax.evaluation import sandbox_programs, score_results
from elmjax.rl.config import RLConfig
from elmjax.run_dir import program_seed


def _envs(config: RLConfig) -> list[Any]:
    from elmjax.sodarace.env import Sodarace
    from elmjax.sodarace.params import SimParams

    return [Sodarace(t, SimParams(seconds=config.seconds)) for t in config.terrains]


def score_on_terrains(
    texts: list[str], config: RLConfig, first_id: int
) -> tuple[np.ndarray, list[Any]]:
    """distance [N, T]: each program on each terrain (0 when it failed) and the sandbox results."""
    envs = _envs(config)
    seeds = [program_seed(config.seed, first_id + i) for i in range(len(texts))]
    ran = sandbox_programs(texts, envs[0], seeds)
    good = [i for i, r in enumerate(ran) if r.ok and r.value is not None]
    out = np.zeros((len(texts), len(envs)), np.float32)
    for t, env in enumerate(envs):
        if not good:
            break
        scores, _ = score_results(env, [ran[i].value for i in good], seed=0)
        for i, s in zip(good, scores):
            out[i, t] = s.fitness if s.valid else 0.0
    return out, ran


def conditional_matrix(trainer: Any, params: Any, label: str) -> dict[str, Any]:
    """Sample `eval_samples` programs per conditioning with `params` and score all of them on
    every terrain. Keys: mean/best [C][T], valid [C], texts, distance [C*N, T]."""
    from elmjax.rl.trainer import EVAL_ID_BASE, finish_programs

    c, fn = trainer.config, trainer.fn
    n = c.eval_samples
    conditioning = np.repeat(np.arange(len(c.terrains)), n)
    index, profile = fn.rows(conditioning)
    key = jax.random.fold_in(jax.random.key(c.seed), -1 & 0x7FFFFFFF)
    tokens, mask = jax.device_get(fn.sample(params, index, profile, key))
    texts, _ = finish_programs(
        trainer.model.tokenizer, trainer.prompt, tokens, mask, c.stop, fn.eos_id
    )
    distance, ran = score_on_terrains(texts, c, EVAL_ID_BASE)
    rows = distance.reshape(len(c.terrains), n, len(c.terrains))
    return {
        "label": label,
        "mean": rows.mean(axis=1).tolist(),
        "best": rows.max(axis=1).tolist(),
        "valid": np.asarray([bool(r.ok) for r in ran]).reshape(-1, n).mean(axis=1).tolist(),
        "texts": texts,
        "distance": distance,
        "walkers": [r.value if r.ok else None for r in ran],
    }


def unconditioned(trainer: Any) -> dict[str, Any]:
    """The stage-2 model without a soft prompt: `eval_samples` programs on every terrain."""
    from elmjax.rl.trainer import EVAL_ID_BASE, finish_programs

    c, fn = trainer.config, trainer.fn
    key = jax.random.fold_in(jax.random.key(c.seed), 0x5EED)
    tokens, mask = jax.device_get(fn.ref_sample(fn.ref_state, key, rows=c.eval_samples))
    texts, _ = finish_programs(
        trainer.model.tokenizer, trainer.prompt, tokens, mask, c.stop, fn.eos_id
    )
    distance, ran = score_on_terrains(texts, c, EVAL_ID_BASE + (1 << 20))
    return {
        "mean": distance.mean(axis=0).tolist(),
        "best": distance.max(axis=0).tolist(),
        "valid": float(np.mean([bool(r.ok) for r in ran])),
        "samples": c.eval_samples,
    }


def stage1_baseline(run: str | Path, config: RLConfig) -> dict[str, Any]:
    """The best walkers of an `evolve` run's archive (its best program per cell, top
    `stage1_top` by fitness) on every terrain."""
    from elmjax.rl.trainer import EVAL_ID_BASE
    from elmjax.run_dir import STORE, open_store

    path = Path(run)
    if not (path / STORE).exists():
        raise ValueError(f"{path} holds no evolve run ({STORE} missing)")
    store = open_store(path / STORE)
    try:
        elites = store.stage2_dataset(within=0.0)
    finally:
        store.close()
    elites = sorted(elites, key=lambda r: -(r.fitness or 0.0))[: config.stage1_top]
    if not elites:
        raise ValueError(f"{path}: the archive holds no valid program")
    distance, _ = score_on_terrains([e.text for e in elites], config, EVAL_ID_BASE + (1 << 21))
    single = int(np.argmax(distance.mean(axis=1)))
    best = distance.argmax(axis=0)
    return {
        "run": str(path),
        "elites_tried": len(elites),
        "per_terrain_best": distance.max(axis=0).tolist(),
        "per_terrain_program_ids": [int(elites[i].program_id) for i in best],
        "single_walker": {
            "program_id": int(elites[single].program_id),
            "distance": distance[single].tolist(),
            "mean": float(distance[single].mean()),
        },
    }


def verdicts(after: list[list[float]], stage1: dict[str, Any] | None) -> dict[str, Any]:
    """`specialises`: on every terrain, its own conditioning beats every other conditioning
    (strictly: a tie, e.g. all programs failing, is no specialisation)."""
    a = np.asarray(after)
    diag = np.diag(a)
    own_best = [
        bool(all(diag[t] > a[c, t] for c in range(len(diag)) if c != t)) for t in range(len(diag))
    ]
    out: dict[str, Any] = {
        "specialises": bool(all(own_best) and len(diag) > 1),
        "diagonal_is_column_max": own_best,
        "beats_single_walker": None,
    }
    if stage1 is not None:
        single = np.asarray(stage1["single_walker"]["distance"])
        out["beats_single_walker"] = bool(np.all(diag > single))
    return out


def write_eval(
    path: Path,
    config: RLConfig,
    step: int,
    before: dict[str, Any],
    after: dict[str, Any],
    baselines: dict[str, Any],
) -> dict[str, Any]:
    """Write RUN_DIR/eval.json (schema in the module docstring) and return it."""
    report = {
        "terrains": list(config.terrains),
        "step": step,
        "eval_samples": config.eval_samples,
        "before": before["mean"],
        "after": after["mean"],
        "before_best": before["best"],
        "after_best": after["best"],
        "before_valid": before["valid"],
        "after_valid": after["valid"],
        "baselines": baselines,
        **verdicts(after["mean"], baselines.get("stage1")),
        "units": "distance toward the terrain's goal (|dx| where it has none), walker units",
    }
    tmp = path / "eval.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(path / "eval.json")
    return report


def typical_walkers(after: dict[str, Any], config: RLConfig) -> dict[str, tuple[Any, float]]:
    """Per terrain: the valid program written under its own conditioning whose distance there
    is the median of those programs (a typical walker, not the best)."""
    n = config.eval_samples
    out = {}
    for t, name in enumerate(config.terrains):
        rows = [t * n + i for i in range(n) if after["walkers"][t * n + i] is not None]
        if not rows:
            continue
        d = after["distance"][rows, t]
        pick = rows[int(np.argsort(d)[len(d) // 2])]
        out[name] = (after["walkers"][pick], float(after["distance"][pick, t]))
    return out


def write_pictures(path: Path, config: RLConfig, after: dict[str, Any]) -> list[str]:
    """eval/reward_curve.png from metrics.jsonl and eval/typical-<terrain>.gif (viz)."""
    written = []
    out = path / "eval"
    out.mkdir(exist_ok=True)
    try:
        written.append(plot_curves(path, config, out / "reward_curve.png"))
    except Exception as err:  # a picture never fails the run
        print(f"rl: reward curve not drawn: {err}")
    if config.gifs:
        from elmjax.viz.walker_gif import render_gif

        for name, (walker, dist) in typical_walkers(after, config).items():
            try:
                written.append(
                    render_gif(
                        walker,
                        out / f"typical-{name}.gif",
                        terrain=name,
                        seconds=config.seconds,
                        title=f"typical walker for {name}: {dist:.1f} units",
                    )  # fmt: skip
                )
            except Exception as err:
                print(f"rl: picture for {name} not drawn: {err}")
    return written


def plot_curves(path: Path, config: RLConfig, target: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from elmjax.run_dir import read_metrics

    rows = [r for r in read_metrics(path) if "reward" in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    steps = [r["step"] for r in rows]
    for name in config.terrains:
        axes[0].plot(steps, [r.get(f"distance/{name}", np.nan) for r in rows], label=name)
    axes[0].set_xlabel("PPO step")
    axes[0].set_ylabel("mean distance on own terrain (units)")
    axes[0].legend()
    axes[1].plot(steps, [r["valid"] for r in rows], label="valid share")
    axes[1].plot(steps, [r["kl_to_stage2"] for r in rows], label="KL to stage 2 (nats/token)")
    axes[1].set_xlabel("PPO step")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return str(target)
