"""Where one generation of the `diff` operator spends its time, and what share of the machine's
matmul rate the model reaches.

    python benchmarks/operator_profile.py [--model elm-tiny] [--batch 32] [--repeats 2] [--json PATH]
    python benchmarks/operator_profile.py --model smollm2-135m --batch 8 --repeats 1 --calls-only
    python benchmarks/operator_profile.py --calls-only --compile-cache /tmp/c --children out.json

`--compile-cache` turns on JAX's persistent compilation cache in that directory, as a run does
(`elmjax.compile_cache`, a run's `compile_cache` setting, "auto" by default): a fresh directory
measures the first call with a cold cache, a second process on the same directory the first
call of a later run. `--children` writes every call's completions (JSON), to check that a
change leaves the samples as they were.

One `mutate` of `--batch` held-out parents (`benchmarks/eval_parents.json`, repeated to fill the
batch), n = 1, at the operator's default settings (temperature 0.8, top-p 0.95, 256 new tokens),
split into:

- tokenise: encoding the prompts on the host;
- per length group of the sampler (`elmjax.lm.sampler.prompt_groups`): compile (first call
  minus a warm call), prefill (a warm call with max_new_tokens = 1: the prompt pass and one
  draw) and decode (a warm call at the real settings minus the prefill call);
- sampling: the share of a decode step spent choosing the token (top-p draw vs greedy, both
  run for a fixed number of steps with EOS ignored);
- host apply: turning the completions into children (`try_apply`);
- the whole `mutate` after warm-up, and its first call (compile included).

Every figure is wall seconds and CPU seconds of this process (`time.process_time`, all threads):
on a shared machine the CPU figures are the ones to compare. `flops` counts the model's matmul
and attention FLOPs (2 per multiply-add, causal attention over the real prompt tokens, the
padded ones separately), and `fraction_of_matmul_peak` divides the achieved rate by the rate
XLA reaches on a large float32 matmul in the same process (a measured peak, not the chip's
datasheet figure).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.operators import load_parents  # noqa: E402


class Clock:
    """Wall and process CPU seconds of a block."""

    def __enter__(self) -> Clock:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0

    def dict(self) -> dict[str, float]:
        return {"wall_s": round(self.wall, 4), "cpu_s": round(self.cpu, 4)}


def matmul_peak(size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s XLA reaches on a [size, size] x [size, size] float32 matmul (best of repeats)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def model_flops(config, prompt_lens: list[int], padded: list[int], gen_lens: list[int]) -> dict:
    """Matmul + attention FLOPs of a generation (2 per multiply-add).

    Per token through the layers: 2 x (q, k, v, o, MLP weights); attention 4 x context x
    head_dim x heads per layer (scores and the weighted sum). The prefill's logits are for the
    last position only; every decode step computes a full row of logits.
    """
    d, L, hd = config.d_model, config.n_layers, config.hd
    h, kvh = config.n_heads, config.kv_heads
    mlp = (3 if config.arch == "llama" else 2) * d * config.d_mlp
    per_token = 2 * L * (d * h * hd + 2 * d * kvh * hd + h * hd * d + mlp)
    logits = 2 * d * config.vocab_size

    def attention(ctx_sum: float) -> float:
        return 4 * L * h * hd * ctx_sum

    real_prefill = sum(n * per_token + attention(n * (n + 1) / 2) + logits for n in prompt_lens)
    padded_prefill = sum(p * per_token + attention(p * p) + logits for p in padded)
    decode = sum(
        g * (per_token + logits) + attention(g * n + g * (g + 1) / 2)
        for n, g in zip(prompt_lens, gen_lens)
    )
    return {
        "prefill_real": real_prefill,
        "prefill_padded": padded_prefill,
        "decode": decode,
        "per_token_layers": per_token,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="elm-tiny")
    p.add_argument("--batch", type=int, default=32, help="parents (children at n = 1)")
    p.add_argument("--repeats", type=int, default=2, help="warm calls per measured figure")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    p.add_argument(
        "--calls-only",
        action="store_true",
        help="only the first and warm `mutate` calls, printed as measured (for "
        "models whose per-group split would take too long, e.g. smollm2-135m)",
    )
    p.add_argument(
        "--compile-cache",
        default=None,
        metavar="SETTING",
        help="JAX's persistent compilation cache as a run's `compile_cache` sets it "
        "(a directory, 'auto' or 'off'; default: JAX's own settings)",
    )
    p.add_argument(
        "--children",
        default=None,
        metavar="PATH",
        help="write the completions of every mutate call (JSON: seed -> texts)",
    )
    args = p.parse_args(argv)

    cache_entries = None
    if args.compile_cache is not None:
        from elmjax import compile_cache

        directory = compile_cache.enable(args.compile_cache)
        cache_entries = len(os.listdir(directory)) if directory is not None else None
        print(
            "compile_cache",
            json.dumps({"directory": str(directory), "entries_before": cache_entries}),
            flush=True,
        )

    import jax

    from elmjax.lm.sampler import prompt_groups
    from elmjax.mutation.operators import STOP, make_operator
    from elmjax.mutation.unified_diff import try_apply

    parents = [t for texts in load_parents(8).values() for t in texts]
    parents = (parents * (args.batch // len(parents) + 1))[: args.batch]
    op = make_operator("diff", model=args.model)
    sampler = op.sampler
    prompts = [prompt for prompt, _ in op.prompts(parents, args.seed)]
    settings = dict(temperature=op.temperature, top_p=op.top_p, top_k=op.top_k)
    key = jax.random.key(args.seed)

    completions: dict[int, list[str | None]] = {}
    with Clock() as first:
        children = op.mutate(parents, 1, args.seed)
    completions[args.seed] = [c.raw_output for c in children]
    print("first_mutate", json.dumps(first.dict()), flush=True)
    warm = []
    for r in range(args.repeats):
        with Clock() as c:
            children = op.mutate(parents, 1, args.seed + 1 + r)
        completions[args.seed + 1 + r] = [c.raw_output for c in children]
        warm.append(c)
        print("warm_mutate", json.dumps(c.dict()), flush=True)
    if args.children:
        with open(args.children, "w") as f:
            json.dump(completions, f, indent=1)
    if args.calls_only:
        report = {
            "benchmark": "operator_profile",
            "model": args.model,
            "batch": args.batch,
            "load_average": os.getloadavg(),
            "compile_cache": args.compile_cache,
            "compile_cache_entries_before": cache_entries,
            "first_mutate": first.dict(),
            "warm_mutate": [c.dict() for c in warm],
            "children_per_s": args.batch / min(c.wall for c in warm) if warm else None,
            "first_children_per_s": args.batch / first.wall,
        }
        print(json.dumps(report, indent=1))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=2)
        return 0

    with Clock() as tok_clock:
        ids = [sampler.encode(prompt) for prompt in prompts]
    lengths = [len(i) for i in ids]
    pad_of = prompt_groups(lengths, sampler.prompt_buckets, sampler.max_groups)
    stop = sampler.stop_array(list(STOP))

    def call(members: list[int], new: int, **kw: object) -> tuple:
        return sampler.generate_ids(
            [ids[i] for i in members], 1, key, new, stop_ids=stop, batch_lengths=lengths, **kw
        )

    groups = []
    gen_lens: dict[int, int] = {}
    for length in sorted(set(pad_of.values())):
        members = [i for i, n in enumerate(lengths) if pad_of[n] == length]
        row = {"padded_length": length, "prompts": len(members)}
        with Clock() as cold:
            call(members, op.max_new_tokens, **settings)
        with Clock() as cold1:
            call(members, 1, **settings)
        times = {"prefill": [], "full": []}
        for _ in range(args.repeats):
            with Clock() as c:
                call(members, 1, **settings)
            times["prefill"].append(c)
            with Clock() as c:
                _, glens, _ = call(members, op.max_new_tokens, **settings)
            times["full"].append(c)
        for i, g in zip(members, glens):
            gen_lens[i] = int(g)

        def best(clocks: list[Clock]) -> Clock:
            return min(clocks, key=lambda c: c.cpu)

        pre, full = best(times["prefill"]), best(times["full"])
        row["compile_cpu_s"] = round(cold.cpu + cold1.cpu - full.cpu - pre.cpu, 3)
        row["compile_wall_s"] = round(cold.wall + cold1.wall - full.wall - pre.wall, 3)
        row["prefill"] = pre.dict()
        row["decode"] = {
            "wall_s": round(full.wall - pre.wall, 4),
            "cpu_s": round(full.cpu - pre.cpu, 4),
        }
        row["decode_steps"] = int(max(glens))
        row["decode_ms_per_step_cpu"] = round(1e3 * (full.cpu - pre.cpu) / max(max(glens), 1), 3)
        groups.append(row)
        print(json.dumps(row), flush=True)

    # sampling share of a decode step: top-p draw vs greedy over the same fixed steps
    members = list(range(len(prompts)))
    steps = 64
    share = {}
    for label, kw in (("greedy", dict(temperature=0.0)), ("top_p", settings)):
        call(members, steps, ignore_eos=True, **kw)
        with Clock() as c:
            call(members, steps, ignore_eos=True, **kw)
        share[label] = c.dict()
    sampling_cpu_per_step = (share["top_p"]["cpu_s"] - share["greedy"]["cpu_s"]) / steps

    outs = [c.raw_output or "" for c in children]
    with Clock() as apply_clock:
        for parent, text in zip(parents, outs):
            try_apply(parent, op.format.to_unified(text))

    flops = model_flops(
        sampler.config,
        lengths,
        [pad_of[n] for n in lengths],
        [gen_lens.get(i, 0) for i in range(len(lengths))],
    )
    warm_best = min(warm, key=lambda c: c.wall)
    peak = matmul_peak()
    achieved = (flops["prefill_padded"] + flops["decode"]) / warm_best.wall
    report = {
        "benchmark": "operator_profile",
        "model": args.model,
        "batch": args.batch,
        "settings": {**settings, "max_new_tokens": op.max_new_tokens},
        "platform": platform.platform(),
        "load_average": os.getloadavg(),
        "prompt_tokens": {
            "min": min(lengths),
            "max": max(lengths),
            "mean": float(np.mean(lengths)),
        },
        "first_mutate": first.dict(),
        "warm_mutate": [c.dict() for c in warm],
        "children_per_s": args.batch / warm_best.wall,
        "first_children_per_s": args.batch / first.wall,
        "tokenise": tok_clock.dict(),
        "groups": groups,
        "sampling_cpu_ms_per_step": round(1e3 * sampling_cpu_per_step, 3),
        "fixed_steps": {"steps": steps, **share},
        "host_apply": apply_clock.dict(),
        "generated_tokens": int(sum(gen_lens.values())),
        "flops": flops,
        "matmul_peak_flops": peak,
        "achieved_flops": achieved,
        "fraction_of_matmul_peak": achieved / peak,
    }
    print(json.dumps({k: v for k, v in report.items() if k != "groups"}, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
