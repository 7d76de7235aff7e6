"""Rebuild `elm-tiny`, elmjax's embedded default diff model, from scratch on a CPU.

    python experiments/train_elm_tiny.py --workdir runs/elm-tiny            # corpus, train, ship
    python experiments/train_elm_tiny.py --workdir runs/elm-tiny --export   # ship the latest
                                                                            # checkpoint as it is

Steps: (1) a corpus of GP edits of the Sodarace seeds in the ELM diff format
(`elmjax.mutation.corpus`; lineages of `HELD_OUT` seeds are kept out); (2) a byte-level BPE
trained on it; (3) a small Llama-style decoder trained with `elmjax.lm.train` on packed
sequences (loss on every token: the programs as well as the diffs, which on a budget of a few
hundred steps teaches the model the code it must copy into a diff's context lines); (4) the
model saved with `save_model` into `elmjax/lm/models/elm-tiny/` with `training.json` (figures
that the model card quotes).

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

#: Markers of the ELM diff format, each one token.
MARKERS = ("<NME>", "<BEF>", "<MSG>", "<DFF>", "<END>")


def model_config(vocab_size: int, eos: int, args: argparse.Namespace):
    from elmjax.lm.config import LMConfig

    return LMConfig(
        arch="llama",
        vocab_size=vocab_size,
        d_model=args.d_model,
        n_layers=args.n_layers,
        n_heads=args.d_model // 32,
        d_mlp=args.d_model * 3,
        max_seq_len=2048,  # RoPE: positions beyond training length still work, less well
        tie_embeddings=True,
        eos_token_id=eos,
        bos_token_id=eos,
    )


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE without GPT-2's word-splitting regex, tokens at most 12 characters: on
    this narrow corpus it needs ~2.5x fewer tokens per example than the regex version (less
    compute per example, shorter decodes), while any text still round-trips exactly."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        max_token_length=12,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(m, normalized=False, single_word=False) for m in MARKERS])
    return tok


def pack(tok, texts: list[str], seq_len: int, seed: int):
    """Greedy packing of shuffled examples (each ending in <|endoftext|>) into rows of
    `seq_len`; examples longer than a row are dropped. Loss on every real token."""
    from elmjax.lm.train import TokenDataset

    eos = tok.token_to_id("<|endoftext|>")
    pad = tok.token_to_id("<|pad|>")
    encoded = [tok.encode(t, add_special_tokens=False).ids + [eos] for t in texts]
    kept = [ids for ids in encoded if len(ids) <= seq_len]
    order = np.random.default_rng(seed).permutation(len(kept))
    rows, row = [], []
    for i in order:
        ids = kept[i]
        if len(row) + len(ids) > seq_len:
            rows.append(row)
            row = []
        row = row + ids
    if row:
        rows.append(row)
    tokens = np.full((len(rows), seq_len), pad, np.int32)
    mask = np.zeros((len(rows), seq_len), bool)
    for r, ids in enumerate(rows):
        tokens[r, : len(ids)] = ids
        mask[r, 1 : len(ids)] = True
    stats = {
        "examples": len(encoded),
        "examples_kept": len(kept),
        "rows": len(rows),
        "tokens": int(mask.sum()),
        "mean_example_tokens": float(np.mean([len(x) for x in kept])),
        "max_example_tokens": int(max(len(x) for x in kept)),
    }
    return TokenDataset(tokens, mask), stats


def build(args: argparse.Namespace, work: pathlib.Path) -> None:
    """Corpus, tokenizer and packed data, written once into `work`."""
    from elmjax.mutation.corpus import build_corpus
    from elmjax.sodarace.seeds import load_seeds

    t0 = time.time()
    corpus = build_corpus(
        load_seeds(),
        seed=args.seed,
        generations=args.generations,
        children_per_generation=args.children,
    )
    train_ex = [e.example() for e in corpus["train"]]
    held_ex = [e.example() for e in corpus["held_out"]]
    with open(work / "corpus.jsonl", "w") as f:
        for split, edits in corpus.items():
            for e in edits:
                f.write(
                    json.dumps(
                        {
                            "split": split,
                            "seed": e.seed,
                            "generation": e.generation,
                            "kind": e.kind,
                            "detail": e.detail,
                            "parent": e.parent,
                            "child": e.child,
                        }
                    )
                    + "\n"
                )
    tok = train_tokenizer([e.text for e in train_ex], args.vocab_size)
    tok.save(str(work / "tokenizer.json"))
    data, stats = pack(tok, [e.text for e in train_ex], args.seq_len, args.seed)
    held_tokens = [len(tok.encode(e.text).ids) for e in held_ex]
    stats.update(
        train_edits=len(corpus["train"]),
        held_out_edits=len(corpus["held_out"]),
        held_out_mean_example_tokens=float(np.mean(held_tokens)) if held_tokens else 0.0,
        train_seeds=sorted({e.seed for e in corpus["train"]}),
        held_out_seeds=sorted({e.seed for e in corpus["held_out"]}),
        build_seconds=time.time() - t0,
    )
    np.savez(work / "data.npz", tokens=data.tokens, loss_mask=data.loss_mask)
    (work / "data.json").write_text(json.dumps(stats, indent=2))
    print(json.dumps(stats), flush=True)


def write_eval_parents(work: pathlib.Path, per_seed: int = 8) -> None:
    """Held-out parents for the operator benchmark: per ELM seed, valid GP descendants that are
    not among the corpus programs (for cppn_mutable, the whole lineage is held out anyway)."""
    from elmjax.mutation.corpus import eval_parents
    from elmjax.sodarace.seeds import ELM_SEEDS, load_seeds

    seen = set()
    with open(work / "corpus.jsonl") as f:
        for line in f:
            row = json.loads(line)
            seen.update((row["parent"], row["child"]))
    parents = eval_parents(load_seeds(ELM_SEEDS), seen, per_seed)
    (work / "eval_parents.json").write_text(json.dumps(parents, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default=str(ROOT / "runs" / "elm-tiny"))
    p.add_argument("--out", default=str(SHIP))
    p.add_argument("--export", action="store_true", help="ship the latest checkpoint, no training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--children", type=int, default=150, help="GP children per generation")
    p.add_argument("--vocab-size", type=int, default=2048)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layers", type=int, default=6)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--time-limit", type=float, default=None, help="seconds of training")
    args = p.parse_args(argv)

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    work = pathlib.Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "data.npz").exists():
        build(args, work)
    if not (work / "eval_parents.json").exists():
        write_eval_parents(work)

    import jax

    from elmjax.lm import LanguageModel, init_decoder, save_model
    from elmjax.lm.state import count_params
    from elmjax.lm.tokenizer import load_tokenizer
    from elmjax.lm.train import TokenDataset, TrainConfig, train

    tok = load_tokenizer(work / "tokenizer.json")
    npz = np.load(work / "data.npz")
    data = TokenDataset(npz["tokens"], npz["loss_mask"])
    config = model_config(tok.get_vocab_size(), tok.token_to_id("<|endoftext|>"), args)
    decoder = init_decoder(config, jax.random.key(args.seed))
    tcfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=min(40, args.steps // 10),
        weight_decay=0.05,
        log_every=5,
        checkpoint_every=25,
        time_limit_s=args.time_limit,
    )

    def on_log(rec: dict) -> None:
        with open(work / "train.log", "a") as log:
            log.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), flush=True)

    decoder, history = train(
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
    summary = {
        "config": config.to_dict(),
        "parameters": int(count_params(decoder)),
        "train": {k: v for k, v in vars(tcfg).items()},
        "steps_done": last.get("step", 0),
        "final_loss": last.get("loss"),
        "final_loss_mean_last_10_logs": float(np.mean(tail)) if tail else None,
        "data": json.loads((work / "data.json").read_text()),
        "jax": jax.__version__,
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    save_model(LanguageModel(config, decoder, tok, name="elm-tiny"), args.out)
    (pathlib.Path(args.out) / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    shutil.copy(work / "eval_parents.json", pathlib.Path(args.out) / "eval_parents.json")
    print(json.dumps({k: summary[k] for k in ("parameters", "steps_done", "final_loss")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
