"""One run on borrowed accelerator hardware records everything (docs/launch.md, "Checking a machine").

    PYTHONPATH=. python benchmarks/device_check.py --json check.json [--quick]

Needs only what an accelerator image already has (JAX, flax, optax, chex, orbax, tokenizers,
safetensors): no pip, no network, no weights. brax, gguf and tensorboardX are never imported.
The LM is a randomly initialised model of SmolLM2-135M's shape (30 layers, width 576, 9 heads
with 3 KV heads, MLP 1536, vocabulary 49152): decode speed does not depend on the weights'
values. Figures, each written to the JSON as soon as it is measured (a crash or a lost lease
keeps what was measured):

- `sim`: simulator walker-steps/s (walkers x simulated frames per second) for the seed
  walkers at several batch sizes;
- `decode`: LM decode tokens/s in bfloat16 at batch 64 and 256 (greedy, fixed length);
- `archive_insert`: candidates inserted per second into the paper's 12^3 grid, 4096 per call;
- `e2e_gp`, `e2e_diff`: end-to-end evaluations/s of a short ELM run with the GP operator and
  with the diff operator (the embedded elm-tiny model, bfloat16), compilation excluded.

Each section is limited in size so that the whole check fits in 8 minutes on one GPU; a section
that fails records its error and the next one runs. `--quick` shrinks every size (a CPU check
of the script itself, about a minute).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RESULTS: dict = {}
#: seconds after which the remaining sections are skipped (the whole check must fit in 8 min).
DEADLINE = 400
OUT: Path | None = None


def record(name: str, value: object) -> None:
    """Keep a figure and write the JSON now."""
    RESULTS[name] = value
    text = json.dumps(RESULTS, indent=2, default=str)
    if OUT is not None:
        tmp = OUT.with_suffix(OUT.suffix + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, OUT)
    print(
        f"[{time.time() - START:6.1f}s] {name}: {json.dumps(value, default=str)[:300]}", flush=True
    )


def section(name: str):
    """Run a section; its failure is recorded as a figure and the check goes on."""

    def wrap(fn):
        def run(*args, **kw):
            if time.time() - START > DEADLINE:
                record(name, {"skipped": f"past the check's {DEADLINE} s deadline"})
                return
            t0 = time.perf_counter()
            try:
                value = fn(*args, **kw)
                if isinstance(value, dict):
                    value["section_seconds"] = round(time.perf_counter() - t0, 2)
                record(name, value)
            except Exception as err:
                record(
                    name,
                    {
                        "error": f"{type(err).__name__}: {err}",
                        "trace": traceback.format_exc()[-2000:],
                    },
                )

        return run

    return wrap


def seed_walkers(count: int) -> list:
    from elmjax.sodarace.env import Sodarace
    from elmjax.sodarace.walker import check_walker, walker_creator

    base = []
    for text in Sodarace().seed_programs().values():
        g = {"walker_creator": walker_creator}
        exec(text, g)  # the repository's own seed programs
        base.append(check_walker(g["make_walker"]()))
    return (base * (count // len(base) + 1))[:count]


@section("sim")
def check_sim(batches: list[int], seconds: float) -> dict:
    from elmjax.sodarace.env import Sodarace
    from elmjax.sodarace.physics import SimParams

    params = SimParams(seconds=seconds)
    out = {"seconds": seconds, "frames": params.frames, "walker_steps_per_s": {}}
    for batch in batches:
        walkers = seed_walkers(batch)
        env = Sodarace(params=params, chunk=batch)
        env.evaluate(walkers)  # compile
        t0 = time.perf_counter()
        env.evaluate(walkers)
        dt = time.perf_counter() - t0
        out["walker_steps_per_s"][str(batch)] = batch * params.frames / dt
        out[f"evals_per_s_{batch}"] = batch / dt
    return out


def smollm2_shaped(quick: bool):
    """A LanguageModel of SmolLM2-135M's shape (or a tiny one for --quick), random weights."""
    import jax
    from tokenizers import Tokenizer, models

    from elmjax.lm import LanguageModel, LMConfig, init_decoder

    if quick:
        config = LMConfig(
            arch="llama",
            vocab_size=512,
            d_model=64,
            n_layers=2,
            n_heads=4,
            n_kv_heads=2,
            d_mlp=128,
            max_seq_len=2048,
        )
    else:
        config = LMConfig(
            arch="llama",
            vocab_size=49152,
            d_model=576,
            n_layers=30,
            n_heads=9,
            n_kv_heads=3,
            d_mlp=1536,
            max_seq_len=8192,
            rope_theta=100000.0,
            norm_eps=1e-5,
            tie_embeddings=True,
        )
    decoder = init_decoder(config, jax.random.key(0))
    tokenizer = Tokenizer(models.BPE())  # token ids only in this check
    return LanguageModel(config, decoder, tokenizer, name="smollm2-135m-shaped-random")


@section("decode")
def check_decode(quick: bool, batches: list[int], prompt: int, new: int) -> dict:
    import jax
    import numpy as np

    from elmjax.lm.sampler import Sampler
    from elmjax.lm.state import count_params

    model = smollm2_shaped(quick)
    sampler = Sampler(
        model, dtype="bfloat16", prompt_buckets=(prompt,), batch_buckets=tuple(batches)
    )
    rng = np.random.default_rng(0)
    out: dict = {
        "dtype": "bfloat16",
        "prompt_tokens": prompt,
        "new_tokens": new,
        "params": count_params(model.decoder),
        "tokens_per_s": {},
        "compile_s": {},
    }
    for batch in batches:
        ids = rng.integers(1, model.config.vocab_size, size=(batch, prompt)).tolist()
        key = jax.random.key(0)
        t0 = time.perf_counter()
        sampler.generate_ids(ids, 1, key, new, temperature=0.0, ignore_eos=True)
        out["compile_s"][str(batch)] = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, lengths, _ = sampler.generate_ids(ids, 1, key, new, temperature=0.0, ignore_eos=True)
        dt = time.perf_counter() - t0
        out["tokens_per_s"][str(batch)] = float(np.sum(lengths)) / dt
        record("decode_partial", out)
    return out


@section("archive_insert")
def check_archive(candidates: int, repeats: int) -> dict:
    import jax
    import numpy as np

    from elmjax import qd

    spec = qd.GridSpec(shape=(12, 12, 12), low=(0.0, 0.0, 0.0), high=(1.0, 1.0, 1.0))
    rng = np.random.default_rng(0)
    archive = qd.init(spec)
    batches = [
        (
            rng.random(candidates, np.float32),
            rng.random((candidates, 3), np.float32),
            np.ones(candidates, bool),
            np.arange(candidates, dtype=np.int32) + k * candidates,
        )
        for k in range(repeats + 1)
    ]
    archive, _ = qd.insert(archive, *batches[0])  # compile
    jax.block_until_ready(archive)
    t0 = time.perf_counter()
    for batch in batches[1:]:
        archive, info = qd.insert(archive, *batch)
    jax.block_until_ready((archive, info))
    dt = time.perf_counter() - t0
    return {
        "candidates_per_call": candidates,
        "cells": 12**3,
        "inserts_per_s": repeats * candidates / dt,
    }


def e2e(operator: str, batch: int, generations: int, extra: dict, time_limit: float) -> dict:
    from elmjax.config import load_config
    from elmjax.elm import ELM
    from elmjax.run_dir import read_metrics

    overrides = {
        "mutation.operator": operator,
        "batch_size": batch,
        "budget": 1 + generations * batch,
        "time_limit": time_limit,
        "report": False,
        "progress": "never",
        "checkpoint_every": 1000,
        "env.chunk": batch,
        **extra,
    }
    config = load_config(None, overrides)
    with tempfile.TemporaryDirectory(prefix="elmjax-check-") as tmp:
        result = ELM(config, Path(tmp) / "run").run()
        rows = read_metrics(Path(tmp) / "run")
    if len(rows) < 2:
        return {"status": result.status, "error": f"{len(rows)} generation(s) in {time_limit} s"}
    first, last = rows[1] if len(rows) > 2 else rows[0], rows[-1]
    evals = last["evaluations"] - first["evaluations"]
    seconds = last["elapsed"] - first["elapsed"]
    return {
        "status": result.status,
        "batch_size": batch,
        "generations": len(rows),
        "evals_per_s": evals / seconds if seconds > 0 else None,
        "valid_rate_last": last["valid_rate"],
        "time_last_generation": last["time"],
    }


@section("e2e_gp")
def check_e2e_gp(batch: int, generations: int, time_limit: float) -> dict:
    return e2e("gp", batch, generations, {}, time_limit)


@section("e2e_diff")
def check_e2e_diff(batch: int, generations: int, dtype: str, time_limit: float) -> dict:
    extra = {"mutation.model": "elm-tiny", "mutation.dtype": dtype}
    return e2e("diff", batch, generations, extra, time_limit)


def main() -> None:
    global OUT, START, DEADLINE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write the figures here (after every figure)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: check the script on a CPU")
    args = ap.parse_args()
    OUT = args.json
    START = time.time()
    import jax

    q = args.quick
    record(
        "meta",
        {
            "command": " ".join([sys.executable, *sys.argv]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()],
            "device_kind": jax.devices()[0].device_kind,
            "host": platform.platform(),
            "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg(),
        },
    )
    check_sim([16, 64] if q else [256, 1024, 4096], 2.0 if q else 10.0)
    check_decode(q, [4, 8] if q else [64, 256], 32 if q else 256, 8 if q else 256)
    check_archive(256 if q else 4096, 3 if q else 50)
    limit = 600.0 if q else 80.0
    check_e2e_gp(8 if q else 256, 2 if q else 6, limit)
    check_e2e_diff(8 if q else 64, 2 if q else 4, "float32" if q else "bfloat16", limit)
    record("total_seconds", round(time.time() - START, 1))


START = time.time()

if __name__ == "__main__":
    main()
