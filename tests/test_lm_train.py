"""Training: the loss goes down, a resumed run equals an uninterrupted one, LoRA trains only its
adapters, and batches sharded over an 8-device `data` mesh give the single-device result."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap

import chex
import jax
import numpy as np
import pytest
from flax import nnx

from elmjax import tracing
from elmjax.lm.config import LMConfig
from elmjax.lm.model import init_decoder
from elmjax.lm.state import flat_state, stack_layers
from elmjax.lm.tokenizer import train_bpe
from elmjax.lm.train import (
    TokenDataset,
    TrainConfig,
    add_lora,
    examples_from_pairs,
    examples_from_texts,
    masked_loss,
    train,
    unstack_layers,
    wants_remat,
)

TEXTS = [f"def f{i}(x):\n    return x * {i % 10} + {i % 7}\n" for i in range(64)]
TCFG = TrainConfig(steps=12, batch_size=8, lr=1e-2, warmup_steps=2, log_every=4, checkpoint_every=4)


@pytest.fixture(scope="module")
def setup():
    tok = train_bpe(TEXTS, 280)
    cfg = LMConfig(
        arch="llama",
        vocab_size=tok.get_vocab_size(),
        d_model=32,
        n_layers=2,
        n_heads=2,
        d_mlp=64,
        tie_embeddings=True,
        max_seq_len=64,
    )
    data = examples_from_texts(tok, TEXTS, 24)
    return tok, cfg, init_decoder(cfg, jax.random.key(0)), data


def _params(decoder, prefix: str = "") -> dict:
    """A decoder's parameters by state path (those whose name starts with `prefix`)."""
    return {k: v for k, v in flat_state(decoder).items() if k.startswith(prefix)}


def _max_diff(a, b) -> float:
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a, b)))


def test_loss_decreases_and_resume_is_exact(setup, tmp_path):
    _, cfg, params, data = setup
    full, hist = train(params, data, TCFG)
    assert hist[-1]["loss"] < 0.7 * hist[0]["loss"]
    assert hist[0]["lr"] < TCFG.lr and all(np.isfinite(h["grad_norm"]) for h in hist)
    ckpt = tmp_path / "ckpt"
    train(params, data, TCFG, checkpoint_dir=ckpt, stop_at=5)  # "killed" after step 5
    resumed, rest = train(params, data, TCFG, checkpoint_dir=ckpt)
    assert rest[0]["step"] == 8  # continued, did not restart
    chex.assert_trees_all_equal(_params(resumed), _params(full))


def test_completion_mask_and_data_order(setup):
    tok, cfg, params, _ = setup
    pairs = [("# add\n", "def add(a, b):\n    return a + b\n")] * 4
    ds = examples_from_pairs(tok, pairs, 32)
    n_prompt = len(tok.encode("# add\n").ids)
    assert not ds.loss_mask[0, :n_prompt].any() and ds.loss_mask[0, n_prompt]
    # changing a prompt token changes nothing the loss sees except through context
    toks = np.asarray(ds.tokens)
    assert float(masked_loss(params, toks, ds.loss_mask)) > 0
    d = TokenDataset(np.arange(10)[:, None].repeat(3, 1), np.ones((10, 3), bool))
    seen = np.concatenate([d.batch(s, 4, seed=1)[0][:, 0] for s in range(5)])
    assert sorted(seen[:10]) == list(range(10))  # each epoch is a permutation
    chex.assert_trees_all_equal(d.batch(3, 4, 1), d.batch(3, 4, 1))


def test_lora_trains_adapters_only(setup):
    _, cfg, params, data = setup
    tcfg = dataclasses.replace(TCFG, lora_rank=4, lr=3e-2)
    merged, hist = train(params, data, tcfg)
    assert hist[-1]["loss"] < hist[0]["loss"]
    chex.assert_trees_all_equal(_params(merged, "embed"), _params(params, "embed"))  # frozen
    chex.assert_trees_all_equal(_params(merged, "layers.0.mlp"), _params(params, "layers.0.mlp"))
    assert _max_diff(_params(merged, "layers.0.attn.q"), _params(params, "layers.0.attn.q")) > 0


def _trainable_split(cfg: LMConfig, scanned: bool):
    """(graph, trained, rest) of a decoder: LoRA adapters on unrolled layers, or every weight of
    the scanned layout (stacked layers, what the sampler runs)."""
    decoder = init_decoder(cfg, jax.random.key(1))
    if scanned:
        return nnx.split(stack_layers(decoder), nnx.Param, ...)
    add_lora(unstack_layers(decoder), 4, 16.0, ("q", "v", "fc_out"), jax.random.key(2))
    # b starts at zero: move it so that the gradient of a is not zero too
    for path, var in nnx.iter_graph(decoder):
        if isinstance(var, nnx.LoRAParam) and path[-1] == "lora_b":
            var[...] = 0.1 * jax.random.normal(jax.random.key(len(path)), var.shape)
    return nnx.split(decoder, nnx.LoRAParam, ...)


@pytest.mark.parametrize("scanned", [False, True])
def test_remat_changes_memory_not_gradients(scanned):
    """Rematerialisation is the same function: equal loss and gradients. And its point: the
    compiled step's temporaries stop growing with depth (each layer's attention scores are
    recomputed in the backward loop instead of all being held)."""
    cfg = LMConfig(
        arch="llama",
        vocab_size=96,
        d_model=32,
        n_layers=8,
        n_heads=4,
        d_mlp=64,
        tie_embeddings=True,
        max_seq_len=128,
    )
    graph, trained, rest = _trainable_split(cfg, scanned)
    tokens = jax.random.randint(jax.random.key(3), (4, 128), 0, 96)
    mask = np.ones((4, 128), bool)

    def compiled(remat):
        return (
            jax.jit(
                jax.value_and_grad(
                    lambda t: masked_loss(nnx.merge(graph, t, rest), tokens, mask, remat)
                )
            )
            .lower(trained)
            .compile()
        )

    plain, checkpointed = compiled(False), compiled(True)
    (loss0, g0), (loss1, g1) = plain(trained), checkpointed(trained)
    np.testing.assert_allclose(loss1, loss0, rtol=1e-5)
    chex.assert_trees_all_close(g1, g0, rtol=1e-4, atol=1e-6)
    assert _max_diff(g0, jax.tree.map(np.zeros_like, g0)) > 0  # gradients reach the weights
    held = [f.memory_analysis().temp_size_in_bytes for f in (plain, checkpointed)]
    print("temporaries without and with remat", held)
    assert held[1] < held[0] / 3, held


def test_remat_turns_on_for_big_models_only():
    tiny = LMConfig(arch="llama", vocab_size=2353, d_model=128, n_layers=6, n_heads=4, d_mlp=384)
    smol = LMConfig(
        arch="llama",
        vocab_size=49152,
        d_model=576,
        n_layers=30,
        n_heads=9,
        n_kv_heads=3,
        d_mlp=1536,
    )
    assert not wants_remat(tiny, 8, 767) and wants_remat(smol, 8, 767)


_SHARDED = textwrap.dedent(
    """
    import sys, jax, numpy as np
    from elmjax.lm.config import LMConfig
    from elmjax.lm.model import init_decoder
    from elmjax.lm.state import flat_state, stack_layers
    from elmjax.lm.train import TrainConfig, TokenDataset, data_mesh, train
    assert jax.device_count() == 8, jax.devices()
    cfg = LMConfig(arch="gpt2", vocab_size=64, d_model=32, n_layers=1, n_heads=2, d_mlp=64,
                   max_seq_len=16, attn_bias=True, attn_out_bias=True, mlp_bias=True,
                   tie_embeddings=True)
    rng = np.random.default_rng(0)
    data = TokenDataset(rng.integers(0, 64, (32, 16)), np.ones((32, 16), bool))
    out = []
    for devices in (jax.devices()[:1], jax.devices()):
        p, h = train(init_decoder(cfg, jax.random.key(0)), data,
                     TrainConfig(steps=3, batch_size=8, log_every=1), mesh=data_mesh(devices))
        out.append(np.concatenate([np.ravel(x) for x in flat_state(p).values()]))
    np.save(sys.argv[1], np.stack(out))
    """
)


def test_data_sharded_over_eight_devices_matches_one(tmp_path):
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    path = tmp_path / "p.npy"
    subprocess.run([sys.executable, "-c", _SHARDED, str(path)], env=env, check=True, timeout=300)
    one, eight = np.load(path)
    chex.assert_trees_all_close(eight, one, atol=1e-5)


class _Batches:
    """A dataset whose batches come from a function of the step (shape-contract tests)."""

    def __init__(self, make):
        self.make = make

    def batch(self, step, batch_size, seed):
        return self.make(step, batch_size)


def _ok(step, b, t=12):
    rng = np.random.default_rng(step)
    return rng.integers(1, 200, (b, t)).astype(np.int32), np.ones((b, t), bool)


def test_steps_after_the_first_never_retrace(setup):
    _, cfg, params, _ = setup
    tcfg = dataclasses.replace(TCFG, steps=4, log_every=1)
    with tracing.max_traces(1):  # one trace for the whole run, however many steps
        _, hist = train(params, _Batches(_ok), tcfg)
    assert len(hist) == 4
    # the positive control: a batch of another length at step 2 is a second trace
    longer = _Batches(lambda s, b: _ok(s, b, 12 if s < 2 else 16))
    with (
        tracing.max_traces(1),
        pytest.raises(AssertionError, match="'train_step' is traced > 1 times"),
    ):
        train(params, longer, tcfg)


@pytest.mark.parametrize(
    "argument, make",
    [
        ("tokens", lambda s, b: (_ok(s, b)[0][:, :, None], _ok(s, b)[1])),
        ("tokens", lambda s, b: (_ok(s, b)[0].astype(np.float32), _ok(s, b)[1])),
        ("tokens", lambda s, b: (_ok(s, b)[0][:, :1], _ok(s, b)[1][:, :1])),
        ("mask", lambda s, b: (_ok(s, b)[0], _ok(s, b)[1][:, :-1])),
        ("mask", lambda s, b: (_ok(s, b)[0], _ok(s, b)[1].astype(np.float32))),
    ],
)
def test_a_wrong_batch_names_the_argument(setup, argument, make):
    _, cfg, params, _ = setup
    with pytest.raises((AssertionError, ValueError), match=rf"train step: {argument}\b"):
        train(params, _Batches(make), dataclasses.replace(TCFG, steps=1))


def test_gpt2_batches_longer_than_its_positions_are_refused():
    cfg = LMConfig(
        arch="gpt2", vocab_size=64, d_model=16, n_layers=1, n_heads=2, d_mlp=32, max_seq_len=8
    )
    params = init_decoder(cfg, jax.random.key(0))
    fits = _Batches(lambda s, b: (np.ones((b, 9), np.int32), np.ones((b, 9), bool)))
    train(params, fits, dataclasses.replace(TCFG, steps=1))  # 8 inputs + 1 target
    too_long = _Batches(lambda s, b: (np.ones((b, 10), np.int32), np.ones((b, 10), bool)))
    with pytest.raises(ValueError, match=r"train step: tokens .* <= max_seq_len \+ 1 = 9"):
        train(params, too_long, dataclasses.replace(TCFG, steps=1))


class MaskedLossVariantsTest(chex.TestCase):
    """The loss (what the step differentiates) is the same traced and eager."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_and_eager_agree(self):
        cfg = LMConfig(arch="llama", vocab_size=64, d_model=16, n_layers=1, n_heads=2, d_mlp=32)
        decoder = init_decoder(cfg, jax.random.key(0))
        tokens, mask = _ok(0, 4, 10)
        tokens, mask = tokens % 64, mask & (np.arange(10) % 3 > 0)
        graph, state = nnx.split(decoder)
        loss = self.variant(lambda s, t, m: masked_loss(nnx.merge(graph, s), t, m))
        chex.assert_trees_all_close(
            loss(state, tokens, mask), masked_loss(decoder, tokens, mask), rtol=1e-6
        )


def test_a_diverging_step_is_dropped_not_applied(setup):
    """With `skip_nonfinite`, a step whose update would make the weights non-finite (here an
    infinite learning rate) leaves weights and optimizer state as they were, and is counted;
    without it, the same step ruins the model."""
    _, cfg, params, data = setup
    wild = dataclasses.replace(TCFG, steps=3, lr=float("inf"), warmup_steps=1, log_every=1)
    kept, hist = train(params, data, dataclasses.replace(wild, skip_nonfinite=True))
    assert [h["skipped"] for h in hist] == [True, True, True] and hist[-1]["skipped_total"] == 3
    untouched, _ = train(params, data, wild, stop_at=0)  # the same weights, trained layout
    chex.assert_trees_all_equal(_params(kept), _params(untouched))
    ruined, _ = train(params, data, wild)
    assert not all(np.isfinite(v).all() for v in _params(ruined).values())
    # a healthy run is unchanged by the guard
    guarded, _ = train(params, data, dataclasses.replace(TCFG, skip_nonfinite=True))
    plain, _ = train(params, data, TCFG)
    chex.assert_trees_all_equal(_params(guarded), _params(plain))
