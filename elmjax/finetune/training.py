"""Training a stage-2 model: the base model, the tokenized dataset, and the resumable job.

The training loop itself is `elmjax.lm.train.train` (AdamW, masked loss, LoRA, orbax
checkpoints with exact resume); this module decides what goes in: a base model (elm-tiny's
architecture and tokenizer with fresh weights, or a trained model to fine-tune), (prompt,
program) pairs with the loss on the program and its end-of-text token only, and where the
checkpoints, the TensorBoard events and the progress display go.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from elmjax.finetune.config import FinetuneConfig
from elmjax.finetune.dataset import DatasetError, Example
from elmjax.finetune.prompts import program_prompt

CHECKPOINTS = "checkpoints"
TENSORBOARD = "tb"
TRAIN_LOG = "train_log.jsonl"


def base_model(cfg: FinetuneConfig) -> Any:
    """The model training starts from (a `LanguageModel`)."""
    import jax

    from elmjax.lm import LanguageModel, init_decoder, load_model

    if cfg.base != "scratch":
        return load_model(cfg.base)
    ref = load_model(cfg.architecture_of)
    config = dataclasses.replace(ref.config, max_seq_len=max(ref.config.max_seq_len, cfg.seq_len))
    decoder = init_decoder(config, jax.random.key(cfg.seed))
    source = f"trained from scratch ({cfg.architecture_of}'s architecture and tokenizer)"
    return LanguageModel(config, decoder, ref.tokenizer, name="stage2", source=source)


def example_prompt(e: Example, conditioned: bool) -> str:
    return program_prompt(e.niche if conditioned else None)


def tokenize(tokenizer: Any, examples: Sequence[Example], cfg: FinetuneConfig) -> tuple[Any, int]:
    """(TokenDataset of (prompt, program) pairs, number of programs dropped as too long).

    The sequence length is the longest kept example rounded up to 64 tokens (at most
    `seq_len`): a fixed shape for the whole job, and no compute spent on padding beyond it."""
    from elmjax.lm.train import examples_from_pairs

    pairs, dropped, longest = [], 0, 1
    for e in examples:
        prompt = example_prompt(e, cfg.conditioned)
        n = len(tokenizer.encode(prompt + e.text, add_special_tokens=False).ids) + 1
        if n > cfg.seq_len:
            dropped += 1
            continue
        pairs.append((prompt, e.text))
        longest = max(longest, n)
    if not pairs:
        raise DatasetError(f"every program is longer than seq_len={cfg.seq_len} tokens")
    length = min(cfg.seq_len, 64 * math.ceil(longest / 64))
    return examples_from_pairs(tokenizer, pairs, length), dropped


def train_config(cfg: FinetuneConfig) -> Any:
    from elmjax.lm.train import TrainConfig

    return TrainConfig(
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
        lora_rank=cfg.lora_rank,
        log_every=max(1, min(10, cfg.steps // 20 or 1)),
        checkpoint_every=cfg.checkpoint_every,
        time_limit_s=cfg.time_limit,
    )


class TrainDisplay:
    """Progress on stderr (a bar redrawn in place on a terminal, a line every ~10 s otherwise),
    TensorBoard scalars under `MODEL_DIR/tb`, and `MODEL_DIR/train_log.jsonl` (one row per
    logged step; a resumed job appends, readers keep the last row of each step)."""

    def __init__(self, model_dir: Path, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.log = (model_dir / TRAIN_LOG).open("a")
        self.last_line = 0.0
        self.tb = None
        with contextlib.suppress(Exception):  # TensorBoard is a convenience, never fatal
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(model_dir / TENSORBOARD), flush_secs=30)

    def __call__(self, rec: dict[str, Any]) -> None:
        self.log.write(json.dumps(rec) + "\n")
        self.log.flush()
        if self.tb is not None:
            for key in ("loss", "lr", "grad_norm"):
                self.tb.add_scalar(f"train/{key}", rec[key], rec["step"])
        step, frac = rec["step"], rec["step"] / self.total
        width = 30
        bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
        text = (
            f"train [{bar}] {step}/{self.total} steps | loss {rec['loss']:.3f} | "
            f"lr {rec['lr']:.2e} | {rec['seconds']:.0f} s"
        )
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r" + text[:120])
            self.stream.flush()
        elif now - self.last_line > 10 or step == self.total:
            self.stream.write(text + "\n")
            self.stream.flush()
            self.last_line = now

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
        self.log.close()
        if self.tb is not None:
            with contextlib.suppress(Exception):
                self.tb.close()


def read_train_log(model_dir: Path) -> list[dict[str, Any]]:
    """The training history, one row per logged step (the last written wins)."""
    path = model_dir / TRAIN_LOG
    rows: dict[int, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError, KeyError):
                rec = json.loads(line)
                rows[int(rec["step"])] = rec
    return [rows[k] for k in sorted(rows)]


def latest_checkpoint(model_dir: Path) -> int | None:
    import orbax.checkpoint as ocp

    path = (model_dir / CHECKPOINTS).resolve()
    if not path.exists():
        return None
    with ocp.CheckpointManager(path) as manager:
        return manager.latest_step()


def run_training(
    model: Any,
    train: Any,
    cfg: FinetuneConfig,
    model_dir: Path,
    *,
    stop_at: int | None = None,
    stream: TextIO | None = None,
) -> tuple[Any, int]:
    """Train `model` (a LanguageModel) on `train` (a TokenDataset), checkpointing under
    `model_dir/checkpoints`; a call that finds checkpoints there continues from the last one
    exactly. Returns (the trained LanguageModel, the step it reached)."""
    from elmjax.lm import LanguageModel
    from elmjax.lm.train import train as train_loop

    display = TrainDisplay(model_dir, cfg.steps, stream)
    try:
        decoder, _ = train_loop(
            model.decoder,
            train,
            train_config(cfg),
            checkpoint_dir=model_dir / CHECKPOINTS,
            callback=display,
            stop_at=stop_at,
        )
    finally:
        display.close()
    step = latest_checkpoint(model_dir) or 0
    trained = LanguageModel(model.config, decoder, model.tokenizer, model_dir.name, model.source)
    return trained, step
