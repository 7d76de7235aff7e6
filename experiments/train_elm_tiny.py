"""Rebuild `elm-tiny`, elmjax's embedded default diff model, on a CPU (v2: numbered diffs).

    python experiments/train_elm_tiny.py --workdir runs/elm-tiny-v2 \\
        --runs RUN_DIR [RUN_DIR ...]                # corpus, train, ship
    python experiments/train_elm_tiny.py --workdir runs/elm-tiny-v2 --export   # ship as it is

Steps: (1) the corpus: GP lineages of every training seed and of random valid body programs
(`elmjax.mutation.corpus`), plus the diffs that entered the archive in earlier runs (`--runs`:
run directories; their seed programs must not be held out). Held-out lineages (`corpus.HELD_OUT`:
cppn_mutable, wheel, galloper, runner) and the frozen evaluation parents
(`benchmarks/eval_parents.json`) are kept out of every training example, checked by syntax-tree
key. (2) Every edit rendered in the numbered diff format (`diff_format.NUMBERED_FORMAT`: the
parent's lines numbered in the prompt, 0-context hunks that name each removed line by its
number), which a small model can copy from. (3) The tokenizer: the base model's byte-level BPE
plus one added token per line-number prefix `1|` .. `{MAX_LINE}|`, so a line number is the same
single token in the prompt and in the diff. (4) Warm start: the base model (`--base`, default the
shipped v1 weights) with its embedding grown for the new tokens, trained with `elmjax.lm.train`
on packed rows, loss on the diffs only (`edit_data.pack_examples`). (5) Shipped with `save_model`
(`diff_format: numbered` in config.json), `training.json` (figures the model card quotes) and
`training_keys.txt` (syntax-tree keys of every training program, for the overlap test).

Everything lands in `--workdir` first (corpus, tokenizer, packed data, orbax checkpoints,
`train.log`), so the run can be stopped at any point and resumed or exported.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHIP = ROOT / "elmjax" / "lm" / "models" / "elm-tiny"
EVAL_PARENTS = ROOT / "benchmarks" / "eval_parents.json"

#: Line-number tokens `1|` .. `MAX_LINE|` (the seeds have at most ~90 lines; GP grows them).
MAX_LINE = 300


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of handing it back to the kernel.

    Why: XLA:CPU allocates each train step's temporaries as one ~1.7 GB block (attention
    scores of 1,024-token rows, logits; `compiled.memory_analysis()`), which glibc serves with
    mmap and returns with munmap, so every step faults ~2 GB of fresh zeroed pages back in:
    measured ~550k minor faults and ~35% of the process's CPU time in the kernel per step. With
    one arena, no mmap and no trimming, the block is reused: 4.5 s instead of 6.7 s of CPU per
    step (batch 4 x 1,024, same numbers). Only for this training process: it keeps its peak
    heap until it exits. Returns whether glibc accepted every setting (False elsewhere).
    Must run before JAX starts its threads.
    """
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_max, m_arena_max = -1, -2, -4, -8  # <malloc.h>
    settings = ((m_arena_max, 1), (m_mmap_max, 0), (m_trim_threshold, 2**31 - 1),
                (m_top_pad, 256 << 20))  # fmt: skip
    return all(mallopt(param, value) == 1 for param, value in settings)


def eval_parent_keys() -> set[str]:
    from elmjax.mutation.corpus import program_key

    parents = json.loads(EVAL_PARENTS.read_text())["parents"]
    return {program_key(t) for texts in parents.values() for t in texts}


def run_edits(run_dirs: list[str], held_out: tuple[str, ...]) -> list[tuple[str, str]]:
    """Accepted diffs of earlier runs (their stores); refuses a run seeded from a held-out
    lineage."""
    import yaml

    from elmjax.store import ProgramStore

    out = []
    for run in run_dirs:
        cfg = yaml.safe_load((pathlib.Path(run) / "config.yaml").read_text())
        seeds = cfg.get("seed_programs", ["square"])
        bad = [s for s in seeds if pathlib.Path(str(s)).stem in held_out]
        if bad:
            raise SystemExit(f"{run}: seeded from held-out lineage(s) {bad}")
        store = ProgramStore(pathlib.Path(run) / "programs.sqlite")
        out += [(p, c) for _, p, c in store.entered_edits()]
        store.close()
    return out


def build(args: argparse.Namespace, work: pathlib.Path) -> None:
    """Corpus (jsonl) and the training program keys, written once into `work`."""
    from elmjax.mutation.corpus import HELD_OUT, build_corpus, program_key, random_body_corpus
    from elmjax.sodarace.seeds import load_seeds

    t0 = time.time()
    exclude = eval_parent_keys()
    seeds = {k: v for k, v in load_seeds().items() if k not in HELD_OUT}
    corpus = build_corpus(
        seeds,
        seed=args.seed,
        generations=args.generations,
        children_per_generation=args.children,
        exclude=exclude,
    )
    rows = [("seed_lineage", e.seed, e.parent, e.child) for e in corpus["train"]]
    randoms = random_body_corpus(
        args.random_bodies, args.seed, args.random_generations, args.random_children,
        exclude=exclude,
    )  # fmt: skip
    rows += [("random_lineage", "random", e.parent, e.child) for e in randoms]
    archive = run_edits(args.runs, HELD_OUT)
    rows += [
        ("archive", "run", p, c)
        for p, c in archive
        if not {program_key(p), program_key(c)} & exclude
    ]
    with open(work / "corpus.jsonl", "w") as f:
        for source, lineage, parent, child in rows:
            f.write(json.dumps({"source": source, "lineage": lineage, "parent": parent,
                                "child": child}) + "\n")  # fmt: skip
    counts: dict[str, int] = {}
    for source, *_ in rows:
        counts[source] = counts.get(source, 0) + 1
    (work / "corpus.json").write_text(
        json.dumps({"edits": counts, "held_out": list(HELD_OUT), "seconds": time.time() - t0})
    )
    print(json.dumps(counts), flush=True)


def load_corpus(work: pathlib.Path) -> list[dict]:
    with open(work / "corpus.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def grow_tokenizer(tok):
    """The base tokenizer plus the line-number tokens (ids appended after the base vocab)."""
    from tokenizers import AddedToken

    tok.add_tokens([AddedToken(f"{k}|", normalized=False) for k in range(1, MAX_LINE + 1)])
    return tok


def grow_model(base, vocab_size: int, seed: int):
    """The base decoder with its (tied) embedding grown to `vocab_size` rows; new rows drawn
    with the old rows' scale, so the new tokens start as plausible, distinct vectors."""
    import dataclasses

    import jax

    from elmjax.lm.state import decoder_from_flat, flat_state

    flat = {k: np.asarray(v) for k, v in flat_state(base.decoder).items()}
    old = flat["embed.embedding"]
    rng = np.random.default_rng(seed)
    new = rng.normal(0.0, old.std(), (vocab_size - old.shape[0], old.shape[1])).astype(old.dtype)
    flat["embed.embedding"] = np.concatenate([old, new])
    config = dataclasses.replace(base.config, vocab_size=vocab_size)
    return config, decoder_from_flat(config, {k: jax.numpy.asarray(v) for k, v in flat.items()})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default=str(ROOT / "runs" / "elm-tiny-v2"))
    p.add_argument("--out", default=str(SHIP))
    p.add_argument("--base", default=None, help="model directory to start from (default: a "
                   "copy of the shipped bundle made on the first call)")  # fmt: skip
    p.add_argument("--runs", nargs="*", default=[], help="run directories: accepted diffs")
    p.add_argument("--export", action="store_true", help="ship the latest checkpoint, no training")
    p.add_argument("--build-only", action="store_true", help="corpus only")
    p.add_argument("--seed", type=int, default=0, help="corpus, packing and data order: a "
                   "continued round takes another, so it does not repeat the first rows")  # fmt: skip
    p.add_argument("--generations", type=int, default=10)
    p.add_argument("--children", type=int, default=200, help="GP children per generation")
    p.add_argument("--random-bodies", type=int, default=60)
    p.add_argument("--random-generations", type=int, default=3)
    p.add_argument("--random-children", type=int, default=25)
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--time-limit", type=float, default=None, help="seconds of training")
    args = p.parse_args(argv)

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if os.environ["JAX_PLATFORMS"] == "cpu":
        keep_freed_memory()
    work = pathlib.Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "corpus.jsonl").exists():
        build(args, work)
    if args.build_only:
        return 0

    from elmjax.lm import LanguageModel, load_model, save_model
    from elmjax.lm.state import count_params
    from elmjax.lm.tokenizer import load_tokenizer
    from elmjax.lm.train import TokenDataset, TrainConfig, train
    from elmjax.mutation.corpus import program_key
    from elmjax.mutation.diff_format import NUMBERED_FORMAT
    from elmjax.mutation.edit_data import edit_examples, pack_examples

    base_dir = pathlib.Path(args.base) if args.base else work / "base"
    if not args.base and not base_dir.exists():
        shutil.copytree(SHIP, base_dir)
    base = load_model(str(base_dir))
    rows = load_corpus(work)
    if not (work / "data.npz").exists():
        tok = grow_tokenizer(base.tokenizer)
        tok.save(str(work / "tokenizer.json"))
        examples = edit_examples([(r["parent"], r["child"]) for r in rows], NUMBERED_FORMAT)
        data, stats = pack_examples(tok, examples, args.seq_len, args.seed)
        stats["corpus"] = json.loads((work / "corpus.json").read_text())
        np.savez(work / "data.npz", tokens=data.tokens, loss_mask=data.loss_mask)
        (work / "data.json").write_text(json.dumps(stats, indent=2))
        print(json.dumps(stats), flush=True)
    tok = load_tokenizer(work / "tokenizer.json")
    npz = np.load(work / "data.npz")
    data = TokenDataset(npz["tokens"], npz["loss_mask"])
    config, decoder = grow_model(base, tok.get_vocab_size(), args.seed)
    tcfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=min(20, args.steps // 10),
        weight_decay=0.05,
        log_every=5,
        checkpoint_every=20,
        time_limit_s=args.time_limit,
        seed=args.seed,
    )

    def on_log(rec: dict) -> None:
        with open(work / "train.log", "a") as log:
            log.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), flush=True)

    decoder, _ = train(
        decoder,
        data,
        tcfg,
        checkpoint_dir=work / "checkpoints",
        callback=on_log,
        stop_at=0 if args.export else None,
    )
    log_path = work / "train.log"
    lines = log_path.read_text().splitlines() if log_path.exists() else []
    records = [json.loads(line) for line in lines if line.strip()]
    last = records[-1] if records else {}
    tail = [r["loss"] for r in records[-10:]]
    import jax

    summary = {
        "config": config.to_dict(),
        "diff_format": NUMBERED_FORMAT.name,
        "parameters": int(count_params(decoder)),
        "base": str(base_dir),
        "train": {k: v for k, v in vars(tcfg).items()},
        "steps_done": last.get("step", 0),
        "final_loss": last.get("loss"),
        "final_loss_mean_last_10_logs": float(np.mean(tail)) if tail else None,
        "data": json.loads((work / "data.json").read_text()),
        "jax": jax.__version__,
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    out = pathlib.Path(args.out)
    model = LanguageModel(config, decoder, tok, name="elm-tiny", diff_format=NUMBERED_FORMAT.name)
    save_model(model, out)
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    keys = sorted({program_key(t) for r in rows for t in (r["parent"], r["child"])})
    (out / "training_keys.txt").write_text("\n".join(keys) + "\n")
    stale = out / "eval_parents.json"  # v1 shipped its benchmark parents; they now live in
    if stale.exists():  # benchmarks/eval_parents.json, frozen
        stale.unlink()
    print(json.dumps({k: summary[k] for k in ("parameters", "steps_done", "final_loss")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
