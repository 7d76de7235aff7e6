"""Sampler: greedy equals step-by-step argmax of the full forward, left padding is invisible,
n samples share a prefill, stop sequences end rows early and are trimmed, same key -> same
samples, and new prompts of the same buckets never recompile."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from elmjax import tracing
from elmjax.lm import LanguageModel, LMConfig, init_decoder
from elmjax.lm.sampler import Sampler, generate
from elmjax.lm.tokenizer import train_bpe

TEXTS = [f"def f{i}(x):\n    return x * {i % 10} + {i % 7}\n" for i in range(100)]


@pytest.fixture(scope="module")
def model():
    tok = train_bpe(TEXTS, 300)
    cfg = LMConfig(
        arch="llama",
        vocab_size=tok.get_vocab_size(),
        d_model=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_mlp=64,
        tie_embeddings=True,
        eos_token_id=tok.token_to_id("<|endoftext|>"),
    )
    # large init: peaked distributions, so greedy ties are (practically) impossible
    return LanguageModel(cfg, init_decoder(cfg, jax.random.key(1), std=0.6), tok)


@pytest.fixture(scope="module")
def sampler(model):
    return Sampler(model, prompt_buckets=(8, 16), batch_buckets=(2, 4))


def _reference_greedy(model, prompt: str, steps: int) -> list[int]:
    """Greedy by re-running the cache-free forward on the whole sequence each step (right
    padding to one length: causal attention never sees the pads, and one program compiles)."""
    fwd = nnx.jit(lambda m, x: m(x)[0])
    seq = model.tokenizer.encode(prompt).ids
    n = len(seq)
    buf = np.zeros((1, n + steps), np.int32)
    for _ in range(steps):
        buf[0, : len(seq)] = seq
        seq.append(int(np.argmax(fwd(model.decoder, buf)[0, len(seq) - 1])))
    return seq[n:]


def test_greedy_matches_full_forward_with_left_padding(model, sampler):
    prompts = ["def f1(x):", "x", "return x * 3 + 2"]  # different lengths, one bucket
    res = sampler.sample_detailed(prompts, 2, jax.random.key(0), 10, temperature=0.0)
    for prompt, rows in zip(prompts, res.tokens):
        ref = _reference_greedy(model, prompt, 10)
        eos = model.config.eos_token_id
        ref = ref[: ref.index(eos) + 1] if eos in ref else ref
        assert rows[0] == rows[1] == ref


def test_deterministic_per_key_and_no_recompilation(sampler):
    kw = dict(max_new_tokens=12, temperature=1.0, top_p=0.95, top_k=40, stop=["\n"])
    a = sampler.sample_detailed(["def f2(x):", "def"], 3, jax.random.key(7), **kw)
    # generation 2 and later, same buckets: neither prefill nor decode may trace again
    with tracing.max_traces(0):
        b = sampler.sample_detailed(["def f2(x):", "def"], 3, jax.random.key(7), **kw)
        assert a.tokens == b.tokens and a.texts == b.texts
        c = sampler.sample_detailed(["def f2(x):", "def"], 3, jax.random.key(8), **kw)
        assert c.tokens != a.tokens
        assert len({tuple(t) for t in a.tokens[0]}) > 1  # the n samples of a prompt differ
        # new prompts, new stop strings, one prompt (batch bucket 2 too), a new temperature
        sampler.sample_detailed(
            ["return x * 2 + 1"],
            3,
            jax.random.key(9),
            **{**kw, "stop": ["\n", "return", ":"], "temperature": 0.7},
        )
        # the positive control: a new n is a new program, and the bound sees it
        with pytest.raises(AssertionError, match="'generate' is traced > 0 times"):
            sampler.sample_detailed(["def"], 2, jax.random.key(9), **kw)


def test_a_prompt_may_be_token_ids(model, sampler):
    """Token ids sample exactly as the text they encode (same program, same streams), so a
    caller can end a prompt on a token boundary that re-encoding the text would not keep."""
    prompts = ["def f1(x):", "x", "return x * 3 + 2"]
    ids = [model.tokenizer.encode(p).ids for p in prompts]
    kw = dict(max_new_tokens=10, temperature=0.9, top_p=0.95)
    a = sampler.sample_detailed(prompts, 2, jax.random.key(5), **kw)
    b = sampler.sample_detailed(ids, 2, jax.random.key(5), **kw)
    assert a.tokens == b.tokens and a.texts == b.texts


def test_top_k_one_and_tiny_top_p_are_greedy(model, sampler):
    # same prompt count, n and length as the greedy test: its program is reused
    prompts = ["def f1(x):", "x", "return x * 3 + 2"]
    greedy = sampler.sample_detailed(prompts, 2, jax.random.key(0), 10, temperature=0.0).tokens
    vocab = model.config.vocab_size
    # each filter alone decides (the other is a no-op): one compiled mode serves both calls
    k1 = sampler.sample_detailed(prompts, 2, jax.random.key(3), 10, top_k=1, top_p=0.9999)
    p0 = sampler.sample_detailed(prompts, 2, jax.random.key(3), 10, top_k=vocab, top_p=1e-6)
    assert k1.tokens == greedy and p0.tokens == greedy


def test_stop_sequences_end_rows_early_and_are_trimmed(model, sampler):
    prompt = "def f1(x):"
    full = sampler.sample_detailed([prompt], 1, jax.random.key(0), 16, temperature=0.0)
    toks = full.tokens[0][0]
    assert len(toks) >= 8
    stop = model.tokenizer.decode(toks[4:6])
    cut = sampler.sample_detailed([prompt], 1, jax.random.key(0), 16, temperature=0.0, stop=[stop])
    text = cut.texts[0][0]
    assert stop not in text and full.texts[0][0].startswith(text + stop)
    assert cut.stopped[0][0]
    assert len(cut.tokens[0][0]) <= 6  # the row stopped on device right after the sequence


def test_bad_arguments_are_clear_errors(sampler):
    with pytest.raises(ValueError):
        sampler.sample(["x"], 0, jax.random.key(0))
    with pytest.raises(ValueError):
        sampler.sample(["x"], 1, jax.random.key(0), top_p=0.0)
    assert sampler.sample([], 2, jax.random.key(0)) == []


def test_scanned_layers_and_bfloat16_agree_with_default(model):
    prompts = ["def f1(x):", "return x"]
    base = Sampler(model, prompt_buckets=(16,), batch_buckets=(2,))
    scanned = Sampler(model, prompt_buckets=(16,), batch_buckets=(2,), scan_layers=True)
    kw = dict(max_new_tokens=6, temperature=0.0)
    assert scanned.sample_detailed(prompts, 1, jax.random.key(0), **kw).tokens == (
        base.sample_detailed(prompts, 1, jax.random.key(0), **kw).tokens
    )
    bf16 = Sampler(model, dtype="bfloat16", prompt_buckets=(16,), batch_buckets=(2,))
    out = bf16.sample_detailed(prompts, 1, jax.random.key(0), **kw)
    assert all(len(r[0]) > 0 for r in out.tokens)


def test_prefill_runs_in_bfloat16_only_where_the_cpu_has_bfloat16_units(model, monkeypatch):
    import elmjax.lm.sampler as sampler_module

    def leaves_dtypes(state):
        return {x.dtype for x in jax.tree.leaves(state)}

    for native, prefill in ((True, jnp.bfloat16), (False, jnp.float32)):
        monkeypatch.setattr(sampler_module, "cpu_has_native_bfloat16", lambda n=native: n)
        assert sampler_module.auto_prefill_dtype("float32") == jnp.float32
        assert sampler_module.auto_prefill_dtype("bfloat16") == prefill
        bf16 = Sampler(model, dtype="bfloat16", prompt_buckets=(16,), batch_buckets=(2,))
        assert bf16.prefill_dtype == prefill
        assert leaves_dtypes(bf16.prefill_state) == {jnp.dtype(prefill)}
        assert (bf16.prefill_state is bf16.state) == (prefill == jnp.bfloat16)
        out = bf16.sample_detailed(["def f1(x):"], 1, jax.random.key(0), max_new_tokens=4)
        assert len(out.tokens[0][0]) > 0
    explicit = Sampler(model, dtype="bfloat16", prefill_dtype="float32", prompt_buckets=(16,))
    assert leaves_dtypes(explicit.prefill_state) == {jnp.dtype(jnp.float32)}


def _generate_args(sampler):
    """Well-formed arguments of the device function `generate` for two prompts."""
    tokens = np.zeros((2, 8), np.int32)
    tokens[:, -3:] = [5, 6, 7]
    return dict(
        state=sampler.state,
        prefill_state=sampler.prefill_state,
        prompt_tokens=tokens,
        prompt_start=np.full((2,), 5, np.int32),
        key=jax.random.key(0),
        temperature=np.float32(1.0),
        top_p=np.float32(1.0),
        top_k=np.int32(0),
        stop_seqs=sampler.stop_array(["\n"]),
        eos_ids=np.full((4,), -1, np.int32),
    )


STATIC = dict(n=2, max_new_tokens=3, greedy=True, use_top_k=False, use_top_p=False)


@pytest.mark.parametrize(
    "argument, bad",
    [
        ("prompt_tokens", lambda a: a["prompt_tokens"][0]),
        ("prompt_tokens", lambda a: a["prompt_tokens"].astype(np.float32)),
        ("prompt_start", lambda a: a["prompt_start"][:1]),
        ("temperature", lambda a: np.float32([1.0, 1.0])),
        ("top_k", lambda a: np.float32(3)),
        ("stop_seqs", lambda a: a["stop_seqs"][0]),
        ("eos_ids", lambda a: a["eos_ids"][None]),
        ("state", lambda a: _narrow_embedding(a["state"])),
    ],
)
def test_generate_names_a_wrong_argument(sampler, argument, bad):
    args = _generate_args(sampler)
    with pytest.raises(AssertionError, match=rf"sampler\.generate: {argument}\b"):
        generate(sampler.graph, **{**args, argument: bad(args)}, **STATIC)


def _narrow_embedding(state):
    """A copy of a decoder state whose embedding is [V, 5] instead of [V, d_model]."""
    bad = jax.tree.map(lambda x: x, state)
    var = bad["embed"]["embedding"]
    bad["embed"]["embedding"] = var.replace(var.get_value()[:, :5])
    return bad


class GenerateVariantsTest(chex.TestCase):
    """Eager and jitted generate agree bitwise, so nothing in prefill or decode depends on
    concrete values that tracing would hide (or the reverse)."""

    STATIC = {**STATIC, "greedy": False, "use_top_k": True, "max_new_tokens": 2}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        tok = train_bpe(TEXTS, 300)
        cfg = LMConfig(
            arch="gpt2",
            vocab_size=tok.get_vocab_size(),
            d_model=16,
            n_layers=1,
            n_heads=2,
            d_mlp=32,
            max_seq_len=32,
            tie_embeddings=True,
        )
        model = LanguageModel(cfg, init_decoder(cfg, jax.random.key(2), std=0.5), tok)
        sampler = Sampler(model, prompt_buckets=(8,), batch_buckets=(2,))
        cls.args = {**_generate_args(sampler), "top_k": np.int32(5)}
        cls.graph = sampler.graph
        cls.expected = sampler._generate(**cls.args, **cls.STATIC)

    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_and_eager_agree(self):
        run = self.variant(lambda a: generate(self.graph, **a, **self.STATIC))
        chex.assert_trees_all_equal(run(self.args), self.expected)


def _choose_by_full_sort(logits, keys, temperature, top_p, top_k):
    """The filter as defined: sort the whole vocabulary, keep the top_k, then the smallest
    prefix of the renormalised survivors whose mass reaches top_p."""
    logits = logits / temperature
    ordered = -np.sort(-logits, axis=-1)
    vocab = logits.shape[-1]
    threshold = ordered[:, min(top_k, vocab) - 1] if top_k else np.full(len(logits), -np.inf)
    masked = np.where(ordered >= threshold[:, None], ordered, -np.inf)
    probs = np.exp(masked - masked.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    before = np.cumsum(probs, -1) - probs
    smallest = np.where(before < top_p, ordered, np.inf).min(-1)
    threshold = np.maximum(threshold, smallest)
    final = np.where(logits >= threshold[:, None], logits, -np.inf)
    return np.asarray(jax.vmap(jax.random.categorical)(keys, final))


@pytest.mark.parametrize("flat_rows", [False, True])
@pytest.mark.parametrize("top_k,top_p", [(0, 0.9), (5, 0.8), (40, 1.0), (200, 0.97), (0, 0.999)])
def test_top_k_top_p_without_full_sort_equals_full_sort(top_k, top_p, flat_rows):
    from elmjax.lm.choice import TOP_CANDIDATES, choose_tokens

    rng = np.random.default_rng(top_k)
    # peaked rows (the nucleus lies inside the top candidates: no sort) and, with flat_rows,
    # rows where it does not (the full sort runs for the batch)
    scale = np.where((np.arange(12) % 2 == 0) | (not flat_rows), 4.0, 0.05)[:, None]
    logits = (rng.normal(size=(12, 1000)) * scale).astype(np.float32)
    keys = jax.random.split(jax.random.key(top_k), 12)
    got = choose_tokens(
        jnp.asarray(logits),
        keys,
        jnp.float32(0.8),
        jnp.float32(top_p),
        jnp.int32(top_k),
        False,
        top_k > 0,
        top_p < 1.0,
    )
    want = _choose_by_full_sort(logits, keys, 0.8, top_p, top_k)
    assert TOP_CANDIDATES < 200 and np.array_equal(np.asarray(got), want)


def test_prompt_groups_pad_each_prompt_to_a_bucket_of_its_group():
    from elmjax.lm.sampler import DEFAULT_PROMPT_BUCKETS, MAX_PROMPT_GROUPS, prompt_groups

    buckets = DEFAULT_PROMPT_BUCKETS
    lengths = [int(n) for n in np.random.default_rng(0).integers(20, 1400, 40)]
    pad = prompt_groups(lengths, buckets)
    assert all(n <= pad[n] and pad[n] in buckets for n in lengths)
    assert 1 < len(set(pad.values())) <= MAX_PROMPT_GROUPS
    ordered = sorted(set(lengths))  # groups are runs of lengths: longer never pads shorter
    assert all(pad[a] <= pad[b] for a, b in zip(ordered, ordered[1:]))
    # a function of the multiset of lengths only (every slice of a batch reproduces it)
    assert prompt_groups(lengths[::-1], buckets) == pad
    # one group: everything pads to the longest prompt's bucket
    assert set(prompt_groups(lengths, buckets, 1).values()) == {pad[max(lengths)]}


@pytest.mark.slow
def test_length_groups_sample_as_slices_given_the_batch_lengths(model, monkeypatch):
    """Prompts in different length groups: one call equals calls over slices of the batch that
    pass the whole batch's lengths and their first row (the operators' split invariance)."""
    import elmjax.lm.sampler as sampler_module

    monkeypatch.setattr(sampler_module, "GROUP_TOKENS", 0)  # tiny prompts: one group per bucket
    s = Sampler(model, prompt_buckets=(8, 16, 32), batch_buckets=(1, 2, 4))
    prompts = ["x", TEXTS[3] * 2, "def f1(x):", TEXTS[5], "return x"]
    ids = [s.encode(p) for p in prompts]
    lengths = [len(i) for i in ids]
    assert len(set(sampler_module.prompt_groups(lengths, s.prompt_buckets).values())) > 1
    kw = dict(max_new_tokens=6, temperature=1.0, top_p=0.9)
    whole = s.sample_detailed(prompts, 2, jax.random.key(4), **kw)
    for lo, hi in ((0, 2), (2, 5)):
        part = s.sample_detailed(
            prompts[lo:hi], 2, jax.random.key(4), first_row=2 * lo, batch_lengths=lengths, **kw
        )
        assert part.tokens == whole.tokens[lo:hi]
    greedy = s.sample_detailed(prompts, 1, jax.random.key(0), 8, temperature=0.0)
    for prompt, rows in zip(prompts, greedy.tokens):  # each group is exact, in prompt order
        ref = _reference_greedy(model, prompt, 8)
        eos = model.config.eos_token_id
        assert rows[0] == (ref[: ref.index(eos) + 1] if eos in ref else ref)
