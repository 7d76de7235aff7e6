"""elmjax's code language model: decoder, tokenizer, sampler, training, weight import.

`load_model(name)` resolves a built-in name (`elm-tiny`, `smollm2-135m`), an elmjax or Hugging
Face model directory, a GGUF file, or a hub id; `Sampler(model).sample(prompts, n, key, ...)`
decodes with one jit-compiled prefill and `lax.while_loop`; `elmjax.lm.train.train` fine-tunes.
"""

from elmjax.lm.bundle import LanguageModel, load_saved_model, save_model
from elmjax.lm.config import LMConfig
from elmjax.lm.model import KVCache, forward, init_cache, init_params

__all__ = [
    "KVCache",
    "LMConfig",
    "LanguageModel",
    "Sampler",
    "forward",
    "init_cache",
    "init_params",
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
