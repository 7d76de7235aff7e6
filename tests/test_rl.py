"""Stage 3's pieces on known inputs: terrain embedding, PPO math, the policy's log-probs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from elmjax.lm.config import LMConfig
from elmjax.lm.model import init_decoder
from elmjax.rl import ppo
from elmjax.rl.embedding import TerrainEmbedding, terrain_profile
from elmjax.rl.policy import sample_actions, score_actions

# -- terrain embedding --------------------------------------------------------------------------


def test_profile_reads_walls_ceiling_goal_and_floor():
    points = 16
    flat, left, right, tunnel, bumpy = (
        terrain_profile(t, points) for t in ("flat", "left_wall", "right_wall", "tunnel", "bumpy")
    )
    assert flat.shape == (points + 4,) and flat.dtype == np.float32
    np.testing.assert_array_equal(flat, np.r_[np.zeros(points), 1.0, 1.0, 1.0, 0.0])
    assert left[points + 1] == pytest.approx(2.0 / 40.0) and left[-1] == 1.0  # wall 2 units left
    assert right[points + 2] == pytest.approx(2.0 / 40.0) and right[-1] == -1.0
    assert tunnel[points] == pytest.approx(12.0 / 40.0)
    assert np.abs(bumpy[:points]).max() > 0 and np.all(np.isfinite(bumpy))


def _embedding(num: int = 3, k: int = 2, d: int = 8, points: int = 16) -> TerrainEmbedding:
    base = jnp.arange(k * d, dtype=jnp.float32).reshape(k, d) / 10
    return TerrainEmbedding(num, k, d, points + 4, 16, base, rngs=nnx.Rngs(0))


def test_embedding_shapes_codes_and_unseen_terrains():
    emb = _embedding()
    names = ("left_wall", "right_wall", "tunnel", "hills")
    profile = jnp.asarray(np.stack([terrain_profile(t, 16) for t in names]))
    index = jnp.asarray([0, 1, 2, -1])  # hills: never trained on
    out = emb(index, profile)
    assert out.shape == (4, 2, 8)
    # at the start (codes zero) a prefix is base + the profile's encoding, and differs by terrain
    # (base + x) - base rounds differently from x on some CPUs: compare to float32 precision
    np.testing.assert_allclose(
        out[3],
        emb.base[...] + emb(jnp.asarray([-1]), profile[3:])[0] - emb.base[...],
        rtol=1e-6,
        atol=1e-6,
    )
    assert not np.allclose(out[0], out[1]) and not np.allclose(out[3], out[2])
    # a learned code moves its own terrain only; an unseen terrain never reads a code
    emb.codes[...] = emb.codes[...].at[1].set(5.0)
    moved = emb(index, profile)
    np.testing.assert_allclose(moved[1] - out[1], 5.0, rtol=1e-6)
    for row in (0, 2, 3):
        np.testing.assert_array_equal(moved[row], out[row])


# -- PPO math -------------------------------------------------------------------------------------


def _gae_reference(r, v, m, gamma, lam):
    b, t = r.shape
    adv = np.zeros((b, t))
    for i in range(b):
        n = int(m[i].sum())
        a = 0.0
        for s in reversed(range(n)):
            nv = v[i, s + 1] if s + 1 < n else 0.0
            a = r[i, s] + gamma * nv - v[i, s] + gamma * lam * a
            adv[i, s] = a
    return adv, (adv + v) * m


def test_gae_on_hand_computed_and_random_inputs():
    # one program of 3 tokens, score 1 at the end, values 0.5: gamma = lam = 1 gives
    # returns 1 everywhere and advantages 0.5
    r = jnp.asarray([[0.0, 0.0, 1.0, 0.0]])
    v = jnp.asarray([[0.5, 0.5, 0.5, 9.0]])  # the value on padding is ignored
    m = jnp.asarray([[True, True, True, False]])
    adv, ret = ppo.gae(r, v, m, 1.0, 1.0)
    np.testing.assert_allclose(adv, [[0.5, 0.5, 0.5, 0.0]])
    np.testing.assert_allclose(ret, [[1.0, 1.0, 1.0, 0.0]])
    # gamma 0.9, lam 0.5 against a loop
    rng = np.random.default_rng(0)
    r, v = rng.normal(size=(4, 7)), rng.normal(size=(4, 7))
    lengths = np.asarray([7, 3, 1, 0])
    m = np.arange(7)[None] < lengths[:, None]
    adv, ret = ppo.gae(jnp.asarray(r * m), jnp.asarray(v), jnp.asarray(m), 0.9, 0.5)
    want_adv, want_ret = _gae_reference(r * m, v * m, m, 0.9, 0.5)
    np.testing.assert_allclose(adv, want_adv, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ret, want_ret, rtol=1e-5, atol=1e-6)


def test_token_rewards_put_the_score_on_the_last_token_and_kl_on_each():
    m = jnp.asarray([[True, True, False], [False, False, False]])
    logp = jnp.asarray([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    ref = jnp.asarray([[-1.5, -1.0, 0.0], [0.0, 0.0, 0.0]])
    r = ppo.token_rewards(jnp.asarray([3.0, 7.0]), m, logp, ref, 0.1)
    np.testing.assert_allclose(r, [[-0.1 * 0.5, 3.0 - 0.1 * -1.0, 0.0], [0.0, 0.0, 0.0]], rtol=1e-6)


def test_ppo_loss_unclipped_and_clipped():
    m = jnp.ones((1, 2), bool)
    adv = jnp.asarray([[1.0, -1.0]])
    zero = jnp.zeros((1, 2))
    same = ppo.ppo_loss(zero, zero, adv, zero, zero, zero, zero, m, 0.2, 0.2, 0.5)
    assert float(same.policy) == pytest.approx(0.0)  # ratio 1: -mean(adv) = 0
    assert float(same.clip_fraction) == 0.0
    # ratio e^1 for both tokens: token 0 (adv +1) is clipped at 1.2, token 1 (adv -1) keeps
    # the unclipped ratio (min picks -e), so the loss is -(1.2 - e) / 2
    up = jnp.ones((1, 2))
    parts = ppo.ppo_loss(up, zero, adv, zero, zero, zero, zero, m, 0.2, 0.2, 0.5)
    assert float(parts.policy) == pytest.approx(-(1.2 - np.e) / 2, rel=1e-5)
    assert float(parts.clip_fraction) == 1.0
    # value: prediction 1 vs return 0 with old value 0 and clip 0.2: max(1, 0.04) / 2
    val = ppo.ppo_loss(zero, zero, adv, up, zero, zero, zero, m, 0.2, 0.2, 0.5)
    assert float(val.value) == pytest.approx(0.5)
    assert float(val.total) == pytest.approx(0.25)


def test_program_scores_and_whiten():
    s = ppo.program_scores(jnp.asarray([10.0, 3.0]), jnp.asarray([True, False]), 0.1, -1.0)
    np.testing.assert_allclose(s, [1.0, -0.1])
    x = jnp.asarray([[1.0, 2.0, 3.0, 100.0]])
    m = jnp.asarray([[True, True, True, False]])
    w = ppo.whiten(x, m)
    assert float(w[0, 3]) == 0.0
    assert float(ppo.masked_mean(w, m)) == pytest.approx(0.0, abs=1e-6)


# -- the policy's log-probs and sampling -----------------------------------------------------------


@pytest.fixture(scope="module")
def decoder():
    cfg = LMConfig(vocab_size=40, d_model=16, n_layers=2, n_heads=2, d_mlp=32, eos_token_id=0)
    return init_decoder(cfg, key=3, std=0.5)


def test_log_probs_match_the_decoders_logits(decoder):
    prompt = jnp.asarray([5, 6, 7])
    actions = jnp.asarray([[8, 9, 10, 11], [12, 13, 1, 2]])
    logp, entropy, values = score_actions(decoder, None, prompt, actions)
    ids = jnp.concatenate([jnp.broadcast_to(prompt, (2, 3)), actions], axis=1)
    logits, _ = decoder(ids)
    want = jax.nn.log_softmax(logits[:, 2:-1], axis=-1)
    np.testing.assert_allclose(
        logp, jnp.take_along_axis(want, actions[..., None], -1)[..., 0], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(entropy, -(jnp.exp(want) * want).sum(-1), rtol=1e-5, atol=1e-5)
    assert values is None
    # a soft prompt made of real token embeddings is the decoder run on those tokens
    pre_ids = jnp.asarray([[3, 4], [20, 21]])
    prefix = decoder.embed(pre_ids)
    logp_p, _, _ = score_actions(decoder, prefix, prompt, actions)
    full = jnp.concatenate([pre_ids, jnp.broadcast_to(prompt, (2, 3)), actions], axis=1)
    lp = jax.nn.log_softmax(decoder(full)[0][:, 4:-1], axis=-1)
    np.testing.assert_allclose(
        logp_p, jnp.take_along_axis(lp, actions[..., None], -1)[..., 0], rtol=1e-5, atol=1e-5
    )
    # temperature divides the logits
    logp_t, _, _ = score_actions(decoder, None, prompt, actions, temperature=2.0)
    want_t = jax.nn.log_softmax(logits[:, 2:-1] / 2.0, axis=-1)
    np.testing.assert_allclose(
        logp_t, jnp.take_along_axis(want_t, actions[..., None], -1)[..., 0], rtol=1e-5, atol=1e-5
    )


def test_sampling_with_a_soft_prompt_follows_the_scored_distribution(decoder):
    """Near-greedy sampling (cached prefill of the soft prompt, then cached decode) picks the
    argmax of the uncached forward at every step, and stops rows at EOS."""
    prompt = jnp.asarray([5, 6])
    prefix = jax.random.normal(jax.random.key(1), (3, 2, 16)) * 0.5
    tokens, mask = sample_actions(
        decoder, prefix, prompt, jax.random.key(0), 1e-4, rows=3, max_new=6, eos_id=0
    )
    assert tokens.shape == (3, 6) and mask.shape == (3, 6)
    logp, _, _ = score_actions(decoder, prefix, prompt, tokens)
    ids = jnp.concatenate([jnp.broadcast_to(prompt, (3, 2)), tokens], axis=1)
    x = jnp.concatenate([prefix, decoder.embed(ids)], axis=1)
    from elmjax.rl.policy import run_layers

    h, _ = run_layers(decoder, x, jnp.broadcast_to(jnp.arange(x.shape[1]), (3, x.shape[1])))
    greedy = jnp.argmax(decoder.logits(h[:, 3:-1]), axis=-1)
    for r in range(3):
        n = int(mask[r].sum())
        np.testing.assert_array_equal(tokens[r, :n], greedy[r, :n])
        if n < 6:
            assert int(tokens[r, n - 1]) == 0 and not mask[r, n:].any()
    assert np.all(np.isfinite(logp))
    # a row's draws depend on the key, its prefix and its index only: row 0 alone = row 0 of 3
    first, first_mask = sample_actions(
        decoder, prefix[:1], prompt, jax.random.key(0), 1.0, rows=1, max_new=6, eos_id=0
    )
    full, full_mask = sample_actions(
        decoder, prefix, prompt, jax.random.key(0), 1.0, rows=3, max_new=6, eos_id=0
    )
    np.testing.assert_array_equal(first_mask[0], full_mask[0])
    np.testing.assert_array_equal(first[0], full[0])


def test_finish_programs_drops_eos_and_cuts_at_stop_strings():
    """The EOS token ends the action but is not program text; a stop string cuts the text and
    the action mask at the token that starts writing it."""
    from elmjax.lm.registry import MODELS_DIR
    from elmjax.lm.tokenizer import encode, load_tokenizer
    from elmjax.rl.trainer import finish_programs

    tok = load_tokenizer(MODELS_DIR / "elm-tiny" / "tokenizer.json")
    body = "def make_walker():\n    return 1\n"
    a = encode(tok, body) + [0]
    b = encode(tok, body + "<MSG> more text")
    width = max(len(a), len(b)) + 2
    tokens = np.zeros((2, width), np.int32)
    mask = np.zeros((2, width), bool)
    for r, ids in enumerate((a, b)):
        tokens[r, : len(ids)] = ids
        mask[r, : len(ids)] = True
    texts, cut = finish_programs(tok, "<NME> walker.py\n<BEF> ", tokens, mask, ("<MSG>",), 0)
    assert texts == [body, body]
    np.testing.assert_array_equal(cut[0], mask[0])  # EOS stays an action token
    kept = int(cut[1].sum())
    assert kept < len(b) and len(tok.decode(b[:kept])) > len(body)  # the token that starts <MSG>
    assert tok.decode(b[: kept - 1]) == body[: len(tok.decode(b[: kept - 1]))]


def test_the_prompt_is_the_one_the_bundle_was_trained_on(tmp_path):
    from elmjax.finetune.prompts import program_prompt
    from elmjax.rl.config import DEFAULT_PROMPT, RLConfig
    from elmjax.rl.model_io import model_prompt

    assert model_prompt(tmp_path, RLConfig()) == DEFAULT_PROMPT
    (tmp_path / "training.json").write_text('{"prompt": "# walker\\n"}')
    assert model_prompt(tmp_path, RLConfig()) == "# walker\n"
    (tmp_path / "finetune.json").write_text("{}")  # a stage-2 bundle of `elmjax finetune`
    assert model_prompt(tmp_path, RLConfig()) == program_prompt()
    assert model_prompt(tmp_path, RLConfig(prompt="x = 1\n")) == "x = 1\n"
