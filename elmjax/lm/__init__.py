"""elmjax's code language model: decoder, tokenizer, sampler, training, weight import.

The model is a `flax.nnx` module (`Decoder`) whose parameters carry logical partitioning
metadata. `load_model(name)` resolves a built-in name (`elm-tiny`, `smollm2-135m`), an elmjax or Hugging
Face model directory, a GGUF file, or a hub id; `Sampler(model).sample(prompts, n, key, ...)`
decodes with one jit-compiled prefill and `lax.while_loop`; `elmjax.lm.train.train` fine-tunes.
"""

from elmjax.lm.bundle import LanguageModel, load_saved_model, save_model
from elmjax.lm.config import LMConfig
from elmjax.lm.model import Decoder, KVCache, init_cache, init_decoder

__all__ = [
    "Decoder",
    "KVCache",
    "LMConfig",
    "LanguageModel",
    "Sampler",
    "init_cache",
    "init_decoder",
    "load_model",
    "load_saved_model",
    "save_model",
]


def __getattr__(name: str):  # lazy: the sampler and the registry pull in more modules
    if name == "Sampler":
        from elmjax.lm.sampler import Sampler

        return Sampler
    if name == "load_model":
        from elmjax.lm.registry import load_model

        return load_model
    raise AttributeError(name)
