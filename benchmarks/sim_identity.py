"""Do two checkouts simulate bitwise alike? Dump every `env.evaluate_bodies` float of a fixed
set of walkers from one tree, then compare two dumps bit for bit.

Walkers: the seven seeds and 64 random valid bodies of 3-20 joints (a muscled chain plus up to
2k random connections, so several size buckets and padded springs), each bucket packed into
chunks of 8, 128 and 256 lanes (padding lanes included), on flat ground and on hills. Every
field of `BodyResult` (dx, validity, bone error, airborne fraction, peak speed, muscle work) is
kept. A change to the simulator that changes no score leaves every one of them equal.

    PYTHONPATH=/work/main python benchmarks/sim_identity.py dump /tmp/main.npz
    PYTHONPATH=$PWD python benchmarks/sim_identity.py dump /tmp/new.npz
    python benchmarks/sim_identity.py compare /tmp/main.npz /tmp/new.npz
"""

from __future__ import annotations

import os
import random
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402


def walkers() -> list[dict]:
    from elmjax.sodarace.seeds import load_seeds
    from elmjax.sodarace.walker import check_walker, walker_creator

    out = []
    for _, src in sorted(load_seeds().items()):
        g = {"walker_creator": walker_creator}
        random.seed(0)
        exec(src, g)
        out.append(check_walker(g["make_walker"]()))
    rng = random.Random(0)
    while len(out) < 7 + 64:
        wc = walker_creator()
        k = rng.randint(3, 20)
        js = [wc.add_joint(rng.uniform(0, 20), rng.uniform(0, 15)) for _ in range(k)]
        try:
            for a in range(k - 1):
                wc.add_muscle(js[a], js[a + 1], rng.choice([0.0, 2.0, 5.0, 10.0]), rng.random())
            for _ in range(rng.randint(0, 2 * k)):
                a, b = rng.sample(range(k), 2)
                wc.add_muscle(js[a], js[b], rng.choice([0.0, 0.0, 5.0]), rng.random())
            out.append(check_walker(wc.get_walker()))
        except ValueError:
            continue
    return out


def dump(path: str) -> None:
    from elmjax.sodarace import env
    from elmjax.sodarace.body import bucket_for, pack, sizes
    from elmjax.sodarace.physics import SimParams
    from elmjax.sodarace.terrain import get_terrain

    print(f"simulating with {env.__file__}", file=sys.stderr)
    ws, out = walkers(), {}
    groups: dict[tuple[int, int], list[int]] = {}
    for k, w in enumerate(ws):
        groups.setdefault(bucket_for(*sizes(w)), []).append(k)
    for terrain in ("flat", "hills"):
        for lanes in (8, 128, 256):
            for bucket, idx in sorted(groups.items()):
                for s in range(0, len(idx), lanes):
                    part = idx[s : s + lanes]
                    body = pack([ws[k] for k in part], bucket, batch_size=lanes)
                    r = env.evaluate_bodies(SimParams(), body, get_terrain(terrain))
                    for field in r.__dataclass_fields__:
                        values = np.asarray(getattr(r, field))[: len(part)]
                        for k, v in zip(part, values):
                            out[f"{terrain}/{lanes}/{k}/{field}"] = v
    np.savez(path, **out)
    print(f"{len(ws)} walkers, {len(out)} values -> {path}", file=sys.stderr)


def compare(a_path: str, b_path: str) -> int:
    a, b = np.load(a_path), np.load(b_path)
    if sorted(a.files) != sorted(b.files):
        print("different keys")
        return 1
    differ = [k for k in a.files if a[k].tobytes() != b[k].tobytes()]
    print(f"{len(a.files)} values compared bit for bit; {len(differ)} differ {differ[:10]}")
    return 1 if differ else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["dump"] and len(sys.argv) == 3:
        dump(sys.argv[2])
    elif sys.argv[1:2] == ["compare"] and len(sys.argv) == 4:
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
