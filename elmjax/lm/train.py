"""Fine-tuning and training of the decoder: AdamW, masked loss, LoRA or full, exact resume.

Usage (e.g. training the built-in `elm-tiny` model from scratch)::

    import jax
    from elmjax.lm import LMConfig, LanguageModel, init_decoder, save_model
    from elmjax.lm.tokenizer import train_bpe
    from elmjax.lm.train import TrainConfig, examples_from_texts, examples_from_pairs, train

    tok = train_bpe(texts, vocab_size=2048)                     # byte-level BPE, <|endoftext|>=0
    cfg = LMConfig(arch="llama", vocab_size=tok.get_vocab_size(), d_model=256, n_layers=4,
                   n_heads=4, d_mlp=768, max_seq_len=512, tie_embeddings=True,
                   eos_token_id=tok.token_to_id("<|endoftext|>"))
    decoder = init_decoder(cfg, jax.random.key(0))              # a flax.nnx module
    data = examples_from_texts(tok, texts, seq_len=512)          # loss on every real token
    # or: examples_from_pairs(tok, [(prompt, completion), ...], 512)  # loss on completions only
    decoder, history = train(cfg, decoder, data, TrainConfig(steps=2000, batch_size=16, lr=1e-3),
                             checkpoint_dir="/tmp/elm-tiny-ckpt")  # rerun the same call to resume
    save_model(LanguageModel(cfg, decoder, tok, name="elm-tiny"), "elmjax/lm/models/elm-tiny")

`history` is a list of {"step", "loss", "lr", "grad_norm"} dicts (one per `log_every` steps).
Interrupt at any time: calling `train` again with the same `checkpoint_dir` restores the
trained parameters and the `nnx.Optimizer` state (step included) and the data position from the
last orbax checkpoint and continues exactly (bitwise the same parameters as an uninterrupted run
on the same machine), and `time_limit_s` stops cleanly after a checkpoint.

Why these choices: the data order is a pure function of (seed, step), so the data position is
the step and resume needs no iterator state. The decoder is split once into (graph, trained
state, frozen state); the jitted step merges them, differentiates with `nnx.value_and_grad`
over the trained variables and applies `nnx.Optimizer` (optax AdamW underneath). LoRA wraps the
targeted `nnx.Linear` layers in `nnx.LoRA` modules (adapter weights are `nnx.LoRAParam`, the
only variables trained) and merges a @ b back into the kernels at the end. A `data` mesh axis
shards the batch; parameters follow the partitioning rules (replicated unless the mesh has a
`model` axis wider than 1).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tokenizers import Tokenizer

from elmjax import tracing
from elmjax.lm.config import LMConfig
from elmjax.lm.contracts import check_train_batch
from elmjax.lm.model import Decoder
from elmjax.lm.partitioning import state_shardings
from elmjax.lm.state import unstack_layers
from elmjax.mesh import DATA


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 16
    lr: float = 3e-4  # peak learning rate
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at `steps`
    weight_decay: float = 0.1  # applied to matrices only (not norms, biases)
    b1: float = 0.9
    b2: float = 0.95
    clip_norm: float = 1.0  # global gradient norm
    seed: int = 0  # data order
    lora_rank: int = 0  # 0 = full fine-tuning
    lora_alpha: float = 16.0  # adapters scaled by alpha / rank (folded into a's init)
    lora_targets: tuple[str, ...] = ("q", "k", "v", "o")  # attention / MLP projection names
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    time_limit_s: float | None = None  # stop (after checkpointing) when exceeded
    # a step whose loss, gradient norm or updated weights are not finite is dropped (weights
    # and optimizer state stay as they were) and counted, instead of poisoning the model:
    # what a run that fine-tunes itself while it evolves needs (`history[i]["skipped"]`)
    skip_nonfinite: bool = False
    # recompute each layer's inside on the backward pass (`Decoder(..., remat=True)`) instead
    # of holding its activations; None: on when they would not fit comfortably (`wants_remat`)
    remat: bool | None = None


# ----------------------------------------------------------------------------- data


@dataclasses.dataclass
class TokenDataset:
    """Fixed-length examples: tokens [N, T] int32 and loss_mask [N, T] bool.

    loss_mask[i, t] says token t is a target (a completion token); token 0 never is.
    """

    tokens: np.ndarray
    loss_mask: np.ndarray

    def __post_init__(self) -> None:
        self.tokens = np.asarray(self.tokens, np.int32)
        self.loss_mask = np.asarray(self.loss_mask, bool)
        if self.tokens.shape != self.loss_mask.shape or self.tokens.ndim != 2:
            raise ValueError("tokens and loss_mask must both be [N, T]")
        if len(self.tokens) == 0:
            raise ValueError("empty dataset")

    def __len__(self) -> int:
        return len(self.tokens)

    def batch_indices(self, step: int, batch_size: int, seed: int) -> np.ndarray:
        """Examples of batch `step`: a fresh permutation per epoch, a pure function of the step."""
        n = len(self)
        idx = np.arange(step * batch_size, (step + 1) * batch_size)
        out = np.empty(batch_size, np.int64)
        for epoch in np.unique(idx // n):
            perm = np.random.default_rng([seed, int(epoch)]).permutation(n)
            sel = idx // n == epoch
            out[sel] = perm[idx[sel] % n]
        return out

    def batch(self, step: int, batch_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        i = self.batch_indices(step, batch_size, seed)
        return self.tokens[i], self.loss_mask[i]


def _pad_id(tok: Tokenizer) -> int:
    for name in ("<|pad|>", "<|endoftext|>", "<pad>", "</s>", "<eos>"):
        i = tok.token_to_id(name)
        if i is not None:
            return i
    return 0


def _eos_id(tok: Tokenizer) -> int | None:
    for name in ("<|endoftext|>", "<|im_end|>", "</s>", "<eos>"):
        i = tok.token_to_id(name)
        if i is not None:
            return i
    return None


def examples_from_pairs(
    tok: Tokenizer, pairs: Sequence[tuple[str, str]], seq_len: int, append_eos: bool = True
) -> TokenDataset:
    """(prompt, completion) pairs -> loss on the completion tokens only (and the EOS after them).

    Right-padded to `seq_len`; examples longer than that are truncated from the left of the
    prompt, so the completion (what is learned) is kept whole when it fits.
    """
    pad, eos = _pad_id(tok), _eos_id(tok)
    tokens = np.full((len(pairs), seq_len), pad, np.int32)
    mask = np.zeros((len(pairs), seq_len), bool)
    for i, (prompt, completion) in enumerate(pairs):
        p = tok.encode(prompt, add_special_tokens=False).ids
        c = tok.encode(completion, add_special_tokens=False).ids
        if append_eos and eos is not None:
            c = c + [eos]
        ids = (p + c)[-seq_len:]
        m = ([False] * len(p) + [True] * len(c))[-seq_len:]
        m[0] = False
        tokens[i, : len(ids)] = ids
        mask[i, : len(m)] = m
    return TokenDataset(tokens, mask)


def examples_from_texts(
    tok: Tokenizer, texts: Sequence[str], seq_len: int, append_eos: bool = True
) -> TokenDataset:
    """Plain documents -> loss on every real token (language modelling from scratch)."""
    return examples_from_pairs(tok, [("", t) for t in texts], seq_len, append_eos)


# ----------------------------------------------------------------------------- LoRA


def _scaled_normal(std: float) -> Any:
    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return (jax.random.normal(key, shape, jnp.float32) * std).astype(dtype)

    return init


def add_lora(
    decoder: Decoder, rank: int, alpha: float, targets: Sequence[str], key: jax.Array
) -> Decoder:
    """Wrap each targeted projection (`q`, `k`, `v`, `o`, `gate`, `up`, `down`, `fc_in`,
    `fc_out`) of every layer in an `nnx.LoRA` module, in place; returns the decoder.

    `b` starts at zero, so the adapted model starts exactly at the base model. `nnx.LoRA` has
    no scaling factor, so alpha / rank is folded into `a`'s initial scale (a ~ N(0, 1 / n_in)
    times alpha / rank), which makes the initial update of W + a @ b the usual scaled one.
    Adapter weights keep the partitioning of the kernel they adapt (a: its input axis,
    b: its output axis).
    """
    if decoder.scanned:
        raise ValueError("add_lora needs the unrolled layer layout (model.unstack_layers)")
    rngs = nnx.Rngs(params=key)
    scale = alpha / rank
    for block in decoder.layers:
        for group in (block.attn, block.mlp):
            for name in targets:
                linear = getattr(group, name, None)
                if not isinstance(linear, nnx.Linear):
                    continue
                n_in, n_out = linear.kernel.shape
                axes = linear.kernel.get_metadata().get("out_sharding") or (None, None)
                lora = nnx.LoRA(
                    n_in,
                    rank,
                    n_out,
                    base_module=linear,
                    a_initializer=_scaled_normal(scale / np.sqrt(n_in)),
                    a_metadata={"out_sharding": (axes[0], None), "eager_sharding": False},
                    b_metadata={"out_sharding": (None, axes[1]), "eager_sharding": False},
                    rngs=rngs,
                )
                setattr(group, name, lora)
    return decoder


def merge_lora(decoder: Decoder) -> Decoder:
    """Fold every `nnx.LoRA` adapter into its base kernel (W + a @ b) and unwrap it, in place."""
    for block in decoder.layers:
        for group in (block.attn, block.mlp):
            for name, child in list(vars(group).items()):
                if isinstance(child, nnx.LoRA):
                    base = child.base_module
                    delta = child.lora_a[...] @ child.lora_b[...]
                    base.kernel[...] = base.kernel[...] + delta.astype(base.kernel.dtype)
                    setattr(group, name, base)
    return decoder


# ----------------------------------------------------------------------------- training


def make_optimizer(tcfg: TrainConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=tcfg.lr,
        warmup_steps=max(tcfg.warmup_steps, 1),
        decay_steps=max(tcfg.steps, tcfg.warmup_steps + 1),
        end_value=tcfg.lr * tcfg.min_lr_ratio,
    )
    return optax.chain(
        optax.clip_by_global_norm(tcfg.clip_norm),
        optax.adamw(
            schedule,
            b1=tcfg.b1,
            b2=tcfg.b2,
            weight_decay=tcfg.weight_decay,
            mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p),
        ),
    )


#: activations a training step may hold before `TrainConfig.remat=None` turns remat on
REMAT_ABOVE_BYTES = 2 << 30


def wants_remat(config: LMConfig, batch_size: int, seq_len: int) -> bool:
    """Whether a step's attention scores alone (float32 [B, H, T, T] for each of L layers, kept
    for the backward pass) would pass REMAT_ABOVE_BYTES. elm-tiny at batch 8 x 768 stays below
    (no recompute, full speed); SmolLM2-135M at the same shape needs ~5 GB for the scores and
    several times that with what the softmax keeps, so it rematerialises."""
    scores = config.n_layers * batch_size * config.n_heads * seq_len**2 * 4
    return scores > REMAT_ABOVE_BYTES


def masked_loss(
    decoder: Decoder, tokens: jax.Array, loss_mask: jax.Array, remat: bool = False
) -> jax.Array:
    """Mean next-token cross entropy over positions where loss_mask is set."""
    logits, _ = decoder(tokens[:, :-1], remat=remat)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    m = loss_mask[:, 1:].astype(jnp.float32)
    return jnp.sum(nll * m) / jnp.maximum(jnp.sum(m), 1.0)


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with a `data` axis over all (or the given) devices (`elmjax.mesh`)."""
    from elmjax.mesh import data_axis_mesh

    return data_axis_mesh(list(devices) if devices is not None else jax.devices())


def _checkpoint_manager(directory: str, keep: int) -> Any:
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
    )


def _place(state: Any, shardings: Any) -> Any:
    """Every variable of an nnx state put on its sharding (committed, so the jitted step sees
    the same input shardings on every call)."""
    return jax.tree.map(
        lambda v, s: v.replace(jax.device_put(v.get_value(), s)),
        state,
        shardings,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )


def _leaf_names(state: Any) -> list[str]:
    """Stable names of a state's leaves (checkpoint keys): `0.layers.3.attn.q.kernel...`."""

    def part(k: Any) -> str:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return str(k)

    paths = jax.tree_util.tree_flatten_with_path(state)[0]
    return [".".join(part(k) for k in path) for path, _ in paths]


def train(
    decoder: Decoder,
    data: TokenDataset,
    tcfg: TrainConfig = TrainConfig(),
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    mesh: Mesh | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    stop_at: int | None = None,
) -> tuple[Decoder, list[dict[str, Any]]]:
    """Train a copy of `decoder` on `data` for `tcfg.steps` steps; returns (decoder, history).

    With `checkpoint_dir`, the trained variables and the optimizer state are saved with orbax
    every `checkpoint_every` steps and at the end, and a call that finds a checkpoint there
    resumes from it. With LoRA (`lora_rank > 0`) the returned decoder has the adapters merged
    in. `mesh` (default: all devices on a `data` axis) shards each batch over `data`; the batch
    size must be a multiple of the `data` axis size. `stop_at` ends this call after that step
    (checkpointed) without changing the schedule, as an interruption would.
    """
    import orbax.checkpoint as ocp

    config = decoder.config
    mesh = mesh or data_mesh()
    n_dev = mesh.shape[DATA]
    if tcfg.batch_size % n_dev:
        raise ValueError(f"batch_size {tcfg.batch_size} not a multiple of {n_dev} data devices")
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P(DATA))

    # a private copy: the step donates its buffers, the caller's decoder must stay valid
    graph, state = nnx.split(unstack_layers(decoder))
    model = nnx.merge(graph, jax.tree.map(lambda x: jnp.array(x, copy=True), state))
    use_lora = tcfg.lora_rank > 0
    if use_lora:
        add_lora(
            model, tcfg.lora_rank, tcfg.lora_alpha, tcfg.lora_targets, jax.random.key(tcfg.seed)
        )
    wrt = nnx.LoRAParam if use_lora else nnx.Param
    optimizer = nnx.Optimizer(model, make_optimizer(tcfg), wrt=wrt)
    trained_filter = nnx.Any(wrt, nnx.OptState)
    graph, trained, frozen = nnx.split((model, optimizer), trained_filter, ...)
    trained_sharding = state_shardings(trained, mesh)
    trained = _place(trained, trained_sharding)
    frozen = _place(frozen, state_shardings(frozen, mesh))

    manager = None
    if checkpoint_dir is not None:
        manager = _checkpoint_manager(os.fspath(checkpoint_dir), tcfg.keep_checkpoints)
        latest = manager.latest_step()
        if latest is not None:
            leaves, treedef = jax.tree.flatten(trained)
            target = {
                "state": dict(zip(_leaf_names(trained), leaves)),
                "data_position": np.zeros((), np.int64),
            }
            abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
            restored = manager.restore(latest, args=ocp.args.StandardRestore(abstract))
            values = [restored["state"][name] for name in _leaf_names(trained)]
            trained = _place(jax.tree.unflatten(treedef, values), trained_sharding)
            position = int(restored["data_position"])
            if position != latest * tcfg.batch_size:
                raise ValueError("checkpoint data position does not match its step and batch size")
    step = int(jax.device_get(nnx.merge(graph, trained, frozen)[1].step[...]))

    @functools.partial(
        jax.jit, out_shardings=(trained_sharding, replicated, replicated), donate_argnums=(0,)
    )
    @tracing.checked
    def train_step(trained: Any, frozen: Any, tokens: jax.Array, mask: jax.Array) -> Any:
        check_train_batch(config, tokens, mask)
        before = jax.tree.leaves(trained)  # arrays: merge may share (and update) the Variables
        model, optimizer = nnx.merge(graph, trained, frozen)
        remat = tcfg.remat  # decided per traced shape (static)
        if remat is None:
            remat = wants_remat(config, tokens.shape[0] // n_dev, tokens.shape[1] - 1)
        loss, grads = nnx.value_and_grad(
            lambda m: masked_loss(m, tokens, mask, remat), argnums=nnx.DiffState(0, wrt)
        )(model)
        optimizer.update(model, grads)
        _, updated, _ = nnx.split((model, optimizer), trained_filter, ...)
        gnorm = optax.tree.norm(grads)
        if not tcfg.skip_nonfinite:
            return updated, loss, gnorm
        finite = jnp.isfinite(loss) & jnp.isfinite(gnorm)
        for leaf in jax.tree.leaves(updated):
            if jnp.issubdtype(leaf.dtype, jnp.floating):
                finite = finite & jnp.all(jnp.isfinite(leaf))
        leaves, treedef = jax.tree.flatten(updated)
        kept = jax.tree.unflatten(
            treedef, [jnp.where(finite, new, old) for new, old in zip(leaves, before)]
        )
        return kept, jnp.where(finite, loss, jnp.nan), gnorm

    def save(step_: int) -> None:
        if manager is None:
            return
        state = {
            "state": dict(zip(_leaf_names(trained), jax.tree.leaves(trained))),
            "data_position": np.asarray(step_ * tcfg.batch_size, np.int64),
        }
        manager.save(step_, args=ocp.args.StandardSave(state), force=True)
        manager.wait_until_finished()

    schedule_lr = optax.warmup_cosine_decay_schedule(
        0.0,
        tcfg.lr,
        max(tcfg.warmup_steps, 1),
        max(tcfg.steps, tcfg.warmup_steps + 1),
        tcfg.lr * tcfg.min_lr_ratio,
    )
    history: list[dict[str, Any]] = []
    skipped = 0
    t0 = time.monotonic()
    last_saved = step
    end = tcfg.steps if stop_at is None else min(stop_at, tcfg.steps)
    while step < end:
        tokens, mask = data.batch(step, tcfg.batch_size, tcfg.seed)
        tokens = jax.device_put(tokens, batch_sharding)
        mask = jax.device_put(mask, batch_sharding)
        trained, loss, gnorm = train_step(trained, frozen, tokens, mask)
        step += 1
        dropped = tcfg.skip_nonfinite and not np.isfinite(float(loss))
        skipped += dropped
        if dropped or step % tcfg.log_every == 0 or step == tcfg.steps:
            rec = {
                "step": step,
                "loss": float(loss),
                "lr": float(schedule_lr(step - 1)),
                "grad_norm": float(gnorm),
                "seconds": time.monotonic() - t0,
            }
            if tcfg.skip_nonfinite:
                rec.update(skipped=bool(dropped), skipped_total=skipped)
            history.append(rec)
            if callback is not None:
                callback(rec)
        if step % tcfg.checkpoint_every == 0:
            save(step)
            last_saved = step
        if tcfg.time_limit_s is not None and time.monotonic() - t0 > tcfg.time_limit_s:
            break
    if step != last_saved:
        save(step)
    if manager is not None:
        manager.close()
    model, _ = nnx.merge(graph, trained, frozen)
    return (merge_lora(model) if use_lora else model), history
