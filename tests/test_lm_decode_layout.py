"""`model.decode_layout`: [out, in] kernels inside a program compute the same logits as the
[in, out] parameter tree (all three families, with biases, unrolled and scanned), and the
parameters outside the program are untouched."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from elmjax.lm import LMConfig, init_decoder
from elmjax.lm.model import decode_layout, init_cache
from elmjax.lm.state import cast_state, stack_layers

FAMILIES = {
    "llama": dict(arch="llama", n_kv_heads=2, tie_embeddings=True),
    "gpt2": dict(arch="gpt2", attn_bias=True, attn_out_bias=True, mlp_bias=True),
    "codegen": dict(arch="codegen", rotary_dim=4, mlp_bias=True, lm_head_bias=True),
}


@pytest.mark.parametrize("scanned", [False, True])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_out_in_kernels_give_the_same_logits(family, scanned):
    cfg = LMConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_mlp=64, **FAMILIES[family])
    decoder = init_decoder(cfg, jax.random.key(0), std=0.3)
    if scanned:
        decoder = stack_layers(decoder)
    graph, state = nnx.split(decoder)
    before = jax.tree.map(np.asarray, state)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 6)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(6), (2, 6))

    def run(state, out_in):
        model = nnx.merge(graph, state)
        if out_in:
            model = decode_layout(model)
        cache = init_cache(cfg, 2, 8, scanned=scanned)
        prefill, cache = model(tokens[:, :5], positions[:, :5], cache, fresh_cache=True)
        step, _ = model(tokens[:, 5:], positions[:, 5:], cache, window=8)
        return prefill, step, model(tokens)[0]

    layer_kernels = [
        v[...]
        for path, v in nnx.to_flat_state(state)
        if path[0] == "layers" and path[-1] == "kernel"
    ]
    assert layer_kernels and all(k.ndim == (3 if scanned else 2) for k in layer_kernels)
    ref = jax.jit(lambda s: run(s, False))(state)
    got = jax.jit(lambda s: run(s, True))(state)
    for r, g in zip(ref, got):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=1e-5, rtol=1e-5)
    # the caller's parameters keep their [in, out] layout and values
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state), before)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="reads XLA:CPU's optimized HLO")
def test_out_in_kernels_survive_compilation():
    """The layout is the point of `decode_layout`: after XLA's optimizations every weight
    product of the decode loop must still contract the kernel's last axis (with bfloat16
    weights, a [B, 1, in] input used to make XLA transpose every kernel back to [in, out])."""
    cfg = LMConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_mlp=64, **FAMILIES["llama"])
    graph, state = nnx.split(init_decoder(cfg, jax.random.key(0), std=0.3))
    state = cast_state(state, jnp.bfloat16)  # the sampler's decode dtype, where it went wrong
    tokens = jnp.zeros((4, 1), jnp.int32)

    def step(state, out_in):  # as the sampler runs it: the layout is made once, outside a loop
        model = nnx.merge(graph, state)
        if out_in:
            model = decode_layout(model)

        def body(_, carry):
            cache, tok = carry
            logits, cache = model(tok, tok, cache, window=8)
            return cache, jnp.argmax(logits, -1).astype(jnp.int32)

        return jax.lax.fori_loop(0, 2, body, (init_cache(cfg, 4, 8, jnp.bfloat16), tokens))[1]

    def rhs_axes(out_in: bool) -> list[str]:
        hlo = jax.jit(step, static_argnums=1).lower(state, out_in).compile().as_text()
        dots = [
            line
            for line in hlo.splitlines()
            if re.search(r"= f32\[\d+,\d+\]\S* dot\(", line) and "lhs_contracting_dims={1}" in line
        ]
        return [re.search(r"rhs_contracting_dims=\{(\d)\}", d).group(1) for d in dots]

    # q, k, v, o, gate, up, down per layer, and the tied lm_head (whose table is [vocab, in])
    weights = 7 * cfg.n_layers
    assert rhs_axes(False).count("0") == weights  # the control: [in, out] kernels read as such
    assert rhs_axes(True) == ["1"] * (weights + 1)
