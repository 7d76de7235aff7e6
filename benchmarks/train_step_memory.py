"""Does keeping freed memory speed up elm-tiny's training step on CPU? Same step, two processes.

    python benchmarks/train_step_memory.py [--steps 5] [--batch-size 4] [--seq-len 1024]

XLA:CPU allocates a train step's temporaries (attention scores of 1,024-token rows, logits:
~1.7 GB for elm-tiny at batch 4) as one block per step, which glibc serves with mmap and
returns with munmap, so each step faults its pages back in. `experiments/train_elm_tiny.py`
calls `keep_freed_memory()` (glibc mallopt: one arena, no mmap, no trim) before JAX starts.
This runs `elmjax.lm.train` on the shipped elm-tiny weights and random tokens of the training
shape (speed does not depend on the values) in two fresh processes, default glibc and
`keep_freed_memory()`, and reports CPU seconds (user + system, all threads) and minor page
faults per step after the first (compiling) step. CPU time rather than wall clock, so the
figure means something on a shared machine; `ratios.cpu_per_step_default_vs_keep` > 1 means
the setting helps.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import json, os, resource, sys
sys.path.insert(0, {root!r})
sys.path.insert(0, os.path.join({root!r}, "experiments"))
if {keep}:
    from train_elm_tiny import keep_freed_memory
    assert keep_freed_memory()
import numpy as np
from elmjax.lm import load_model
from elmjax.lm.train import TokenDataset, TrainConfig, train

def usage():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_stime, r.ru_minflt

model = load_model("elm-tiny")
rng = np.random.default_rng(0)
tokens = rng.integers(1, model.config.vocab_size, ({rows}, {seq_len}), dtype=np.int32)
mask = rng.random(({rows}, {seq_len})) < 0.1
marks = []
train(model.decoder, TokenDataset(tokens, mask),
      TrainConfig(steps={steps}, batch_size={batch}, warmup_steps=1, log_every=1),
      callback=lambda rec: marks.append(usage()))
(c0, s0, f0), (c1, s1, f1) = marks[0], marks[-1]
n = len(marks) - 1
print(json.dumps({{"cpu_s_per_step": (c1 - c0) / n, "sys_s_per_step": (s1 - s0) / n,
                   "minor_faults_per_step": (f1 - f0) / n}}))
"""


def measure(keep: bool, steps: int, batch: int, seq_len: int) -> dict:
    code = CHILD.format(
        root=str(ROOT), keep=keep, rows=4 * batch, seq_len=seq_len, steps=steps, batch=batch
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    load = os.getloadavg()
    result = {
        arm: measure(keep, args.steps, args.batch_size, args.seq_len)
        for arm, keep in (("default", False), ("keep_freed_memory", True))
    }
    result["ratios"] = {
        "cpu_per_step_default_vs_keep": result["default"]["cpu_s_per_step"]
        / result["keep_freed_memory"]["cpu_s_per_step"]
    }
    result.update(
        command=" ".join(["python", "benchmarks/train_step_memory.py", *(argv or sys.argv[1:])]),
        date_utc=time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        load_average_start=load,
        load_average_end=os.getloadavg(),
    )
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
