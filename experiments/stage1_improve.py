"""`stage1.py improve`: the paper's improvement step, fine-tuning the diff model on the diffs that
entered the archive in the stage-1 diff runs.

    accepted diffs of the finished OUT/diff-* runs (ProgramStore.entered_edits; lineages of
      held-out seeds left out)
      -> examples in the diff model's own prompt format (elmjax.mutation.edit_data)
      -> elmjax.lm.train from the embedded elm-tiny's weights (orbax checkpoints: rerun resumes)
      -> OUT/models/elm-tiny-ft (a model directory; `stage1.py run --arm diff_ft` evolves with it)

These runs are new (made by this script after elm-tiny v2 was trained), so none of their diffs is
in elm-tiny's own data. Runs seeded from a held-out lineage (`corpus.HELD_OUT`: cppn_mutable,
wheel, galloper, runner) give no training data: `diff_ft` on cppn_mutable then measures the
improvement on a seed the fine-tuning never saw.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from stage1 import is_finished

STEPS = 200
BATCH = 4
SEQ_LEN = 1024


def improve(args) -> int:
    from elmjax.lm import LanguageModel, load_model, save_model
    from elmjax.lm.train import TrainConfig, train
    from elmjax.mutation.corpus import HELD_OUT
    from elmjax.mutation.diff_format import get_format
    from elmjax.mutation.edit_data import edit_examples, pack_examples
    from elmjax.store import ProgramStore

    out = Path(args.out)
    target = out / "models" / "elm-tiny-ft"
    runs = sorted(p for p in out.glob("diff-*") if (p / "programs.sqlite").exists())
    edits, used = [], {}
    for run in runs:
        config = yaml.safe_load((run / "config.yaml").read_text())
        if set(config["seed_programs"]) & set(HELD_OUT):
            used[run.name] = "skipped: held-out seed lineage"
            continue
        if not is_finished(run, int(config["budget"])):  # a run still going would make the
            used[run.name] = "skipped: unfinished"  # data depend on when improve was called
            continue
        with ProgramStore(run / "programs.sqlite") as store:
            mine = [(p, c) for _, p, c in store.entered_edits()]
        edits += mine
        used[run.name] = len(mine)
    if not edits:
        print(f"[improve] no accepted diffs under {out}/diff-*: run the diff arm first")
        return 2
    target.mkdir(parents=True, exist_ok=True)
    record = target / "runs.json"  # the data a resumed training must see again
    if record.exists() and json.loads(record.read_text()) != used:
        print(f"[improve] {target} was trained on other runs ({record.read_text().strip()}); "
              "move it away to train on these")  # fmt: skip
        return 2
    record.write_text(json.dumps(used))
    base = load_model("elm-tiny")
    fmt = get_format(base.diff_format)
    examples = edit_examples(edits, fmt)
    data, stats = pack_examples(base.tokenizer, examples, SEQ_LEN, seed=0)
    steps = min(STEPS, max(20, 3 * len(data) // BATCH))  # ~3 epochs of a small dataset
    tcfg = TrainConfig(
        steps=steps, batch_size=BATCH, lr=3e-4, warmup_steps=10, checkpoint_every=25, log_every=10
    )
    print(f"[improve] {len(edits)} accepted diffs from {used}; {stats}; {steps} steps", flush=True)
    decoder, history = train(
        base.decoder,
        data,
        tcfg,
        checkpoint_dir=target / "checkpoints",
        callback=lambda r: print(f"[improve] step {r['step']} loss {r['loss']:.3f}", flush=True),
    )
    model = LanguageModel(
        base.config,
        decoder,
        base.tokenizer,
        name="elm-tiny-ft",
        source="elm-tiny fine-tuned on accepted stage-1 diffs (experiments/stage1_improve.py)",
        diff_format=base.diff_format,
    )
    save_model(model, target)
    info = {"runs": used, "edits": len(edits), "data": stats, "train": tcfg.__dict__,
            "history": history}  # fmt: skip
    (target / "improve.json").write_text(json.dumps(info, indent=1, default=str))
    print(f"[improve] wrote {target}")
    return 0
