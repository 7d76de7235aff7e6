"""Model directories: NNX state round-trips through safetensors and orbax bit for bit, and
version-1 directories (the shipped elm-tiny bundle, orbax caches written before the NNX
decoder, with dict-layout names such as `layers.0.attn.q.w`) still load into the module."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from elmjax.lm import LanguageModel, LMConfig, init_decoder, load_saved_model, save_model
from elmjax.lm.registry import MODELS_DIR
from elmjax.lm.state import flat_state, legacy_to_state_name
from elmjax.lm.tokenizer import train_bpe

TEXTS = [f"def f{i}(x):\n    return x * {i}\n" for i in range(40)]
CFG = LMConfig(
    arch="gpt2",
    vocab_size=0,
    d_model=32,
    n_layers=2,
    n_heads=4,
    d_mlp=64,
    max_seq_len=32,
    attn_bias=True,
    attn_out_bias=True,
    mlp_bias=True,
)


@pytest.fixture(scope="module")
def model():
    tok = train_bpe(TEXTS, 270)
    cfg = CFG.replace(vocab_size=tok.get_vocab_size())
    return LanguageModel(cfg, init_decoder(cfg, jax.random.key(0), std=0.3), tok, name="m")


def _same(a, b) -> bool:
    fa, fb = flat_state(a), flat_state(b)
    return fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)


@pytest.mark.parametrize("weights", ["safetensors", "orbax"])
def test_round_trip_is_exact(tmp_path, model, weights):
    save_model(model, tmp_path / "m", weights=weights)
    back = load_saved_model(tmp_path / "m")
    assert back.config == model.config and _same(back.decoder, model.decoder)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["version"] == 2


def test_version_1_directories_load(tmp_path, model):
    import orbax.checkpoint as ocp
    from safetensors.numpy import save_file

    # what the dict-layout elmjax wrote: `embed`, `pos_embed`, `...q.w`, `...q.b`
    names = {"embed.embedding": "embed", "pos_embed.embedding": "pos_embed"}
    legacy = {}
    for name, value in flat_state(model.decoder).items():
        norm = any(n in name for n in ("ln1.", "ln2.", "final_norm."))  # kept scale / bias
        if name in names:
            old = names[name]
        elif name.endswith(".kernel"):
            old = name.removesuffix(".kernel") + ".w"
        elif name.endswith(".bias") and not norm:
            old = name.removesuffix(".bias") + ".b"
        else:
            old = name
        assert legacy_to_state_name(old) == name
        legacy[old] = value
    meta = {
        "format": "elmjax-lm",
        "version": 1,
        "name": "m",
        "source": "",
        "config": model.config.to_dict(),
    }
    for kind in ("safetensors", "orbax"):
        d = tmp_path / kind
        d.mkdir()
        (d / "config.json").write_text(json.dumps(meta))
        model.tokenizer.save(str(d / "tokenizer.json"))
        if kind == "safetensors":
            save_file(legacy, str(d / "model.safetensors"))
        else:
            with ocp.StandardCheckpointer() as ckpt:
                ckpt.save(d.absolute() / "params", {k: jnp.asarray(v) for k, v in legacy.items()})
        assert _same(load_saved_model(d).decoder, model.decoder), kind


def test_shipped_elm_tiny_loads_and_names_its_diff_format():
    meta = json.loads((MODELS_DIR / "elm-tiny" / "config.json").read_text())
    assert meta["version"] == 2 and meta["diff_format"] == "numbered"  # elm-tiny v2
    m = load_saved_model(MODELS_DIR / "elm-tiny")
    assert m.diff_format == "numbered" and m.tokenizer.token_to_id("12|") is not None
    ids = np.array([m.tokenizer.encode("def make_walker():\n").ids])
    logits, _ = m.decoder(ids)
    assert np.isfinite(np.asarray(logits)).all() and logits.shape[-1] == m.config.vocab_size
