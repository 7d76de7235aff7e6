"""Time of the `diff` operator on SmolLM2-135M: a cold and a warm `mutate` of 8 held-out parents.

    PYTHONPATH=. python benchmarks/smollm2_operator_time.py

The issue's reference figure for this operator is ~117 s per 8 children; the full split
(`benchmarks/operator_profile.py --model smollm2-135m`) takes far longer on a 2-core CPU, so
this prints only the two whole calls, wall and CPU time, each as soon as it is measured.
"""

from __future__ import annotations

import json
import time

from benchmarks.operators import load_parents
from elmjax.mutation.operators import make_operator


def main() -> None:
    parents = [t for texts in load_parents(8).values() for t in texts][:8]
    op = make_operator("diff", model="smollm2-135m")
    out = {}
    for label, seed in (("first", 0), ("warm", 1)):
        wall, cpu = time.perf_counter(), time.process_time()
        children = op.mutate(parents, 1, seed)
        row = {"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2)}
        row["children_per_s"] = round(len(children) / row["wall_s"], 4)
        out[label] = row
        print(label, row, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
