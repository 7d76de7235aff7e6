"""A small whole-program walker model for developing and smoke-testing `elmjax rl`.

Stage 3 starts from a stage-2 model: a bundle that writes a whole walker program from a short
prompt (`elmjax finetune`). When none is at hand, this script makes a stand-in of the same kind:
elm-tiny (which has read every training seed inside its diff prompts) fine-tuned briefly on
valid GP descendants of the training seeds, each written whole after `PROMPT` and ended by EOS.
It is a development model, not a stage-2 result: its data are GP edits, not an ELM archive.

    nice -n 10 python experiments/stage3_dev_model.py --out runs/stage3-dev-model --steps 40
"""

from __future__ import annotations

import argparse
import json
import random
import time

from elmjax.lm.bundle import LanguageModel, save_model
from elmjax.lm.registry import load_model
from elmjax.lm.train import TrainConfig, examples_from_pairs, train
from elmjax.mutation.corpus import HELD_OUT, exec_validator, lineage
from elmjax.mutation.diff_format import normalize_program
from elmjax.rl.config import DEFAULT_PROMPT as PROMPT
from elmjax.sodarace.seeds import load_seeds


def programs(seed: int, generations: int, children: int) -> list[str]:
    """Valid GP descendants (and the seeds themselves) of the seeds not held out."""
    out: list[str] = []
    for k, (name, text) in enumerate(sorted(load_seeds().items())):
        if name in HELD_OUT:
            continue
        out.append(normalize_program(text))
        rng = random.Random(seed * 1000 + k)
        out += [e.child for e in lineage(name, text, rng, generations, children, exec_validator)]
    return sorted(set(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--generations", type=int, default=3)
    ap.add_argument("--children", type=int, default=40)
    ap.add_argument("--seq-len", type=int, default=768)
    args = ap.parse_args()
    t0 = time.time()
    texts = programs(0, args.generations, args.children)
    base = load_model("elm-tiny")
    data = examples_from_pairs(base.tokenizer, [(PROMPT, t) for t in texts], args.seq_len)
    tcfg = TrainConfig(
        steps=args.steps, batch_size=8, lr=1e-3, warmup_steps=5, log_every=5, checkpoint_every=10**6
    )
    decoder, history = train(base.decoder, data, tcfg, callback=lambda r: print(r, flush=True))
    model = LanguageModel(
        base.config, decoder, base.tokenizer, name="stage3-dev", source="elm-tiny"
    )
    save_model(model, args.out)
    with open(f"{args.out}/training.json", "w") as f:
        json.dump(
            {"programs": len(texts), "steps": args.steps, "prompt": PROMPT, "history": history,
             "seconds": time.time() - t0},
            f,
            indent=2,
        )  # fmt: skip
    print(f"wrote {args.out}: {len(texts)} programs, {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
