"""Run OpenELM 0.9.2's Box2D Sodarace simulator; executed by `sim_vs_openelm.py` with the python
of a separate venv holding `openelm==0.9.2 --no-deps`, `box2d`, `pygame` and `numpy`.

OpenELM's package `__init__` imports torch and langchain, so the `openelm` and
`openelm.environments` packages are stubbed with their real paths and only
`openelm.environments.sodaracer` (Box2D + pygame) is imported for real.

Usage: python _openelm_sodaracer.py REQUEST.json  (prints one JSON object)
REQUEST: {"walkers": [...], "ms": 10000, "processes": 2} or {"trajectory": walker, "ms": ..., "fps": 10}
"""

import json
import multiprocessing as mp
import os
import sys
import time
import types


def _load():
    import importlib.machinery

    root = next(
        os.path.join(p, "openelm") for p in sys.path if os.path.isdir(os.path.join(p, "openelm"))
    )
    for name, path in (
        ("openelm", root),
        ("openelm.environments", os.path.join(root, "environments")),
    ):
        if name in sys.modules:
            continue
        mod = types.ModuleType(name)
        mod.__path__ = [path]
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        mod.__spec__.submodule_search_locations = [path]
        sys.modules[name] = mod
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    from openelm.environments.sodaracer.simulator import SodaraceSimulator

    return SodaraceSimulator


def _evaluate(args):
    walker, ms = args
    sim = _load()(walker)
    return sim.evaluate(ms)


def main():
    with open(sys.argv[1]) as f:
        req = json.load(f)
    if "trajectory" in req:
        sim = _load()(req["trajectory"])
        world = sim.world
        ids = [str(k + 1) for k in range(len(req["trajectory"]["joints"]))]  # body 0 is the ground
        frames = []
        step_ms = 1000.0 / req["fps"]
        for _ in range(int(req["ms"] / step_ms) + 1):
            frames.append(
                [[world.body_map[i].position[0], world.body_map[i].position[1]] for i in ids]
            )
            world.update_world(step_ms)
        print(json.dumps({"frames": frames}))
        return
    walkers, ms, n = req["walkers"], req["ms"], req["processes"]
    with mp.get_context("fork").Pool(n) as pool:
        pool.map(_evaluate, [(walkers[0], 350)] * n)  # warm: import and first world per process
        t = time.perf_counter()
        out = pool.map(_evaluate, [(w, ms) for w in walkers], chunksize=1)
        seconds = time.perf_counter() - t
    print(json.dumps({"seconds": seconds, "distances": out, "evals_per_s": len(walkers) / seconds}))


if __name__ == "__main__":
    main()
