"""Decode kernels [in, out] vs [out, in] (`model.decode_layout`), A/B in one process.

Runs the sampler's compiled `generate` on `--model` (default SmolLM2-135M; greedy, every row decodes `--new`
tokens) with `kernels_out_in` False and True, alternating the order each round, and reports
the process CPU time and wall time of each whole call (prefill + decode) and whether the
greedy tokens are equal. CPU time of the process, interleaved, is the figure that survives a
shared machine; the vs-transformers ratio is `decode_vs_transformers.py`'s.

    python benchmarks/decode_kernel_layout.py [--model smollm2-135m] [--batch 8] [--prompt 32] [--new 128]
        [--dtype float32] [--rounds 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp
    import numpy as np

    from elmjax.lm import load_model
    from elmjax.lm.sampler import Sampler

    sampler = Sampler(load_model(args.model), dtype=args.dtype)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(
        rng.integers(5, min(40000, sampler.config.vocab_size), (args.batch, args.prompt)), jnp.int32
    )
    call_args = (
        sampler.state,
        sampler.prefill_state,
        tokens,
        jnp.zeros((args.batch,), jnp.int32),
        jax.random.key(0),
        jnp.float32(1e-6),
        jnp.float32(1.0),
        jnp.int32(0),
        jnp.asarray(sampler.stop_array(())),
        jnp.full((4,), -1, jnp.int32),
        jnp.int32(0),
    )
    static = dict(
        n=1,
        max_new_tokens=args.new,
        greedy=True,
        use_top_k=False,
        use_top_p=False,
        cache_dtype=sampler.dtype,
    )

    def call(out_in: bool) -> tuple[np.ndarray, float, float]:
        cpu, wall = time.process_time(), time.perf_counter()
        out = jax.device_get(sampler._generate(*call_args, **static, kernels_out_in=out_in))
        return out[0], time.process_time() - cpu, time.perf_counter() - wall

    first = {flag: call(flag) for flag in (False, True)}  # compiles
    times: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for r in range(args.rounds):
        for flag in (False, True) if r % 2 == 0 else (True, False):
            _, cpu, wall = call(flag)
            times[flag].append((cpu, wall))
            print(
                f"round {r} kernels_out_in={flag}: cpu {cpu:.2f} s, wall {wall:.2f} s", flush=True
            )
    result = {
        "command": "python benchmarks/decode_kernel_layout.py " + " ".join(argv or sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average": os.getloadavg()[0],
        "settings": vars(args),
        "greedy_tokens_equal": float((first[False][0] == first[True][0]).mean()),
    }
    for flag, name in ((False, "in_out"), (True, "out_in")):
        cpu = [c for c, _ in times[flag]]
        result[name] = {
            "cpu_s_min": min(cpu),
            "cpu_s_median": float(np.median(cpu)),
            "wall_s_min": min(w for _, w in times[flag]),
            "first_call_cpu_s": first[flag][1],
        }
    result["cpu_ratio_in_out_over_out_in"] = (
        result["in_out"]["cpu_s_min"] / result["out_in"]["cpu_s_min"]
    )
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
