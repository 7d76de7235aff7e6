"""How good is a stage-2 model, measured as the ELM paper measured its own (section 5).

- **held-out loss**: mean next-token cross entropy on the held-out programs (the program tokens
  and their end-of-text token, as in training);
- **samples**: N programs sampled from the short prompt (or, for a conditioned model, from
  prompts naming niches of the training data), run through the sandbox and the simulator
  (`evaluation.evaluate_programs`) and inserted into a fresh archive: niches filled, QD score,
  valid share, novel share (valid samples whose syntax tree is not in the training set), and
  for a conditioned model the share of samples that land in the niche they were asked for;
- **out-of-distribution completion**: the first half of Wheel, Galloper and Runner (lineages
  never in the data), best of N completions as a fraction of the original's fitness.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from elmjax.finetune.config import FinetuneConfig
from elmjax.finetune.dataset import Dataset, cell_centre
from elmjax.finetune.prompts import completion_ids, normal_form, program_prompt

OOD_WALKERS = ("wheel", "galloper", "runner")


def held_out_loss(model: Any, data: Any, batch_size: int) -> tuple[float, int]:
    """(mean cross entropy per target token, target tokens) over a TokenDataset."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graph, state = nnx.split(model.decoder)

    @jax.jit
    def sums(state: Any, tokens: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        decoder = nnx.merge(graph, state)
        logits, _ = decoder(tokens[:, :-1])
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
        m = mask[:, 1:].astype(jnp.float32)
        return jnp.sum(nll * m), jnp.sum(m)

    total, count = 0.0, 0.0
    n = len(data)
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size) % n
        tokens, mask = data.tokens[idx], data.loss_mask[idx].copy()
        mask[min(batch_size, n - start) :] = False  # rows wrapped round to fill the batch
        s, c = jax.device_get(sums(state, tokens, mask))
        total, count = total + float(s), count + float(c)
    return total / max(count, 1.0), int(count)


def sample_programs(
    model: Any,
    prompts: Sequence[str | Sequence[int]],
    per_prompt: int,
    cfg: FinetuneConfig,
    seed: int,
    prefixes: Sequence[str] | None = None,
) -> list[str]:
    """`per_prompt` samples per prompt, decoded in calls of about `cfg.sample_batch` rows;
    each sample is its prompt's prefix (a program's given first half, else nothing) plus the
    completion. A prompt is text or token ids (`completion_ids`). Deterministic in `seed`."""
    import jax

    from elmjax.lm.sampler import Sampler

    sampler = Sampler(model)
    prefixes = list(prefixes) if prefixes is not None else [""] * len(prompts)
    key = jax.random.key(seed)
    out: list[str] = []
    if per_prompt >= cfg.sample_batch or len(prompts) == 1:
        chunk = min(per_prompt, cfg.sample_batch)
        for i, (prompt, prefix) in enumerate(zip(prompts, prefixes)):
            done = 0
            while done < per_prompt:
                n = min(chunk, per_prompt - done)
                k = jax.random.fold_in(jax.random.fold_in(key, i), done)
                texts = sampler.sample(
                    [prompt], n, k, cfg.max_new_tokens, cfg.temperature, cfg.top_p
                )[0]
                out += [prefix + t for t in texts]
                done += n
        return out
    step = max(1, cfg.sample_batch // per_prompt)
    for start in range(0, len(prompts), step):
        k = jax.random.fold_in(key, start)
        batch = sampler.sample(
            list(prompts[start : start + step]),
            per_prompt,
            k,
            cfg.max_new_tokens,
            cfg.temperature,
            cfg.top_p,
        )
        for prefix, texts in zip(prefixes[start : start + step], batch):
            out += [prefix + t for t in texts]
    return out


def archive_of(results: Sequence[Any], spec: Any) -> Any:
    """A fresh archive holding the valid results (one insert, padded to a power of two)."""
    from elmjax import qd

    n = len(results)
    size = max(64, 1 << max(0, (n - 1).bit_length()))
    dim = len(spec.shape)
    fit = np.zeros(size, np.float32)
    desc = np.zeros((size, dim), np.float32)
    valid = np.zeros(size, bool)
    pid = np.full(size, -1, np.int32)
    for i, r in enumerate(results):
        pid[i] = i
        valid[i] = r.ok
        if r.ok:
            fit[i] = r.fitness
            desc[i] = r.descriptor
    archive, info = qd.insert(qd.init(spec), fit, desc, valid, pid)
    return archive, np.asarray(info.cell)[:n]


def niche_targets(ds: Dataset, n: int, seed: int) -> list[tuple[float, ...]]:
    """n target niches for a conditioned model: the training data's cells, each in turn, in
    a seeded order (so every niche the model saw is asked about, none it cannot know)."""
    cells = sorted({e.cell for e in ds.train})
    order = np.random.default_rng(seed).permutation(len(cells))
    g = ds.grid
    return [
        cell_centre(cells[order[i % len(cells)]], g["shape"], g["low"], g["high"]) for i in range(n)
    ]


def evaluate_samples(
    model: Any, ds: Dataset, cfg: FinetuneConfig, env: Any, spec: Any, samples: int
) -> dict[str, Any]:
    """The sample half of the evaluation (see the module docstring)."""
    from elmjax import qd
    from elmjax.evaluation import evaluate_programs

    if cfg.conditioned:
        targets = niche_targets(ds, samples, cfg.seed)
        texts = sample_programs(model, [program_prompt(t) for t in targets], 1, cfg, cfg.seed)
    else:
        targets = []
        texts = sample_programs(model, [program_prompt()], samples, cfg, cfg.seed)
    results = evaluate_programs(texts, env, seed=cfg.seed, run_seed=cfg.seed)
    archive, cells = archive_of(results, spec)
    m = qd.metrics_host(archive)
    trained = {normal_form(e.text) for e in ds.train}
    forms = [normal_form(t) for t in texts]
    valid = [r.ok for r in results]
    n_valid = sum(valid)
    novel = sum(1 for f, ok in zip(forms, valid) if ok and f not in trained)
    out: dict[str, Any] = {
        "samples": len(texts),
        "niches_filled": int(m["num_filled"]),
        "num_cells": int(spec.num_cells),
        "qd_score": float(m["qd_score"]),
        "max_fitness": float(m["max_fitness"]) if n_valid else 0.0,
        "valid_fraction": n_valid / max(1, len(texts)),
        "novel_fraction": novel / max(1, n_valid),
        "novel_of_samples": novel / max(1, len(texts)),
        "unique_valid": len({f for f, ok in zip(forms, valid) if ok}),
        "errors": error_counts(results),
        "conditioned": cfg.conditioned,
        "niche_hit_fraction": None,
    }
    if cfg.conditioned:
        asked = [_cell(spec, t) for t in targets]
        hits = sum(1 for i, ok in enumerate(valid) if ok and int(cells[i]) == int(asked[i]))
        out["niche_hit_fraction"] = hits / max(1, len(texts))
    return out


def evaluate_ood(
    model: Any, cfg: FinetuneConfig, env: Any, spec: Any, n: int
) -> tuple[dict[str, float], dict[str, Any]]:
    """(`ood`: fraction per walker and their mean, details per walker)."""
    from elmjax.evaluation import evaluate_programs
    from elmjax.sodarace.seeds import load_seed

    originals = [load_seed(name) for name in OOD_WALKERS]
    base = evaluate_programs(originals, env, seed=cfg.seed, run_seed=cfg.seed)
    niches = [
        cell_centre(int(_cell(spec, r.descriptor)), spec.shape, spec.low, spec.high)
        if (cfg.conditioned and r.ok)
        else None
        for r in base
    ]
    shown = [completion_ids(model.tokenizer, t, niche) for t, niche in zip(originals, niches)]
    prompts, halves = [ids for ids, _ in shown], [half for _, half in shown]
    texts = sample_programs(model, prompts, n, cfg, cfg.seed + 1, prefixes=halves)
    results = evaluate_programs(texts, env, seed=cfg.seed, run_seed=cfg.seed + 1)
    ood: dict[str, float] = {}
    detail: dict[str, Any] = {}
    for k, name in enumerate(OOD_WALKERS):
        mine = results[k * n : (k + 1) * n]
        best = max((r.fitness for r in mine if r.ok), default=0.0)
        original = base[k].fitness if base[k].ok else float("nan")
        frac = best / original if base[k].ok and original > 0 else 0.0
        ood[name] = float(frac)
        detail[name] = {
            "original_fitness": float(original),
            "best_fitness": float(best),
            "valid": sum(r.ok for r in mine),
            "errors": error_counts(mine),
            "completions": n,
            "prompt_lines": halves[k].count("\n"),
        }
    ood["mean"] = float(np.mean([ood[name] for name in OOD_WALKERS]))
    return ood, detail


def error_counts(results: Sequence[Any]) -> dict[str, int]:
    """How many results failed with each error kind (sorted by kind)."""
    return dict(sorted(collections.Counter(r.error_kind for r in results if not r.ok).items()))


def _cell(spec: Any, descriptor: Sequence[float]) -> int:
    import jax.numpy as jnp

    from elmjax import qd

    return int(qd.grid_cells(spec, jnp.asarray([descriptor], jnp.float32))[0])


def evaluate_model(
    model: Any,
    ds: Dataset,
    cfg: FinetuneConfig,
    samples: int | None = None,
) -> dict[str, Any]:
    """Every figure of eval.json for `model` trained on `ds` (see the module docstring)."""
    from elmjax.config import RunConfig
    from elmjax.finetune.training import tokenize
    from elmjax.run_dir import grid_spec, make_environment

    t0 = time.monotonic()
    config = RunConfig.from_dict(
        {k: v for k, v in ds.run_config.items() if k not in ("distributed", "compile_cache")}
    )
    env = make_environment(config)
    spec = grid_spec(config, env)
    held, _ = tokenize(model.tokenizer, ds.held_out, cfg)
    loss, tokens = held_out_loss(model, held, cfg.batch_size)
    t_loss = time.monotonic()
    result = evaluate_samples(model, ds, cfg, env, spec, samples or cfg.samples)
    t_samples = time.monotonic()
    ood, detail = evaluate_ood(model, cfg, env, spec, cfg.ood_samples)
    t_ood = time.monotonic()
    return {
        "held_out_loss": loss,
        "held_out_tokens": tokens,
        "held_out_programs": len(ds.held_out),
        **result,
        "ood": ood,
        "ood_detail": detail,
        "seconds": {
            "held_out_loss": t_loss - t0,
            "samples": t_samples - t_loss,
            "ood": t_ood - t_samples,
        },
        "load_average": list(os.getloadavg()),
    }
