"""Jit-compiled batched sampling with a KV cache (docs/architecture.md, "Language model").

One call samples `n` completions for each of a batch of prompts:

1. Prompts are tokenized on the host, LEFT-padded to a length bucket and the batch is padded to
   a batch bucket, so shapes (and therefore compiled programs) repeat across generations.
2. One prefill per prompt fills the KV cache; the cache and the last logits are then repeated
   `n` times along the batch axis, so the n samples of a prompt share its prefill.
3. A `lax.while_loop` decodes one token per step for all rows, with temperature, top-k and top-p,
   until every row has emitted EOS or a stop token sequence, or `max_new_tokens` is reached.
   Finished rows keep running (static shapes) but their output is frozen.
4. On the host, text is decoded and cut at the first exact stop string (the device check on
   token sequences only ends rows early; a stop string tokenized differently is still caught).

Randomness is per row: row r (prompt i, sample j) draws step s from fold_in(fold_in(key, r), s),
so a row's sample depends only on the key, its prompt and its index, never on the batch padding
or on other prompts in the call.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from elmjax import tracing
from elmjax.lm.bundle import LanguageModel
from elmjax.lm.config import LMConfig
from elmjax.lm.contracts import check_generate_args
from elmjax.lm.model import (
    Params,
    cast_params,
    forward,
    init_cache,
    stack_layers,
    unstack_layers,
)

DEFAULT_PROMPT_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096)
DEFAULT_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
MAX_STOP_TOKENS = 8  # longest stop token sequence checked on device (longer ones: host only)


@dataclasses.dataclass
class SampleResult:
    """texts[i][j]: completion j of prompt i after stop trimming; tokens: the raw token ids
    (before trimming, without padding); stopped: whether EOS or a stop string ended it."""

    texts: list[list[str]]
    tokens: list[list[list[int]]]
    stopped: list[list[bool]]


def _bucket(value: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if value <= b:
            return b
    return value


def _choose(
    logits: jax.Array,
    keys: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    top_k: jax.Array,
    greedy: bool,
    use_top_k: bool,
    use_top_p: bool,
) -> jax.Array:
    """Next token per row from float32 logits [B, V]."""
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if use_top_k or use_top_p:
        sorted_logits = -jnp.sort(-logits, axis=-1)  # descending
        threshold = jnp.full(logits.shape[:1], -jnp.inf)
        if use_top_k:
            kth = jnp.take(sorted_logits, jnp.clip(top_k - 1, 0, logits.shape[-1] - 1), axis=-1)
            threshold = jnp.maximum(threshold, kth)
        if use_top_p:
            masked = jnp.where(sorted_logits >= threshold[:, None], sorted_logits, -jnp.inf)
            probs = jax.nn.softmax(masked, axis=-1)
            before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each entry
            keep = before < top_p  # the top entry always kept
            smallest_kept = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1)
            threshold = jnp.maximum(threshold, smallest_kept)
        logits = jnp.where(logits >= threshold[:, None], logits, -jnp.inf)
    return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)


def _repeat_rows(x: jax.Array, n: int, axis: int) -> jax.Array:
    return x if n == 1 else jnp.repeat(x, n, axis=axis)


@tracing.checked
def generate(
    params: Params,
    prefill_params: Params,
    config: LMConfig,
    prompt_tokens: jax.Array,
    prompt_start: jax.Array,
    key: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    top_k: jax.Array,
    stop_seqs: jax.Array,
    eos_ids: jax.Array,
    *,
    n: int,
    max_new_tokens: int,
    greedy: bool,
    use_top_k: bool,
    use_top_p: bool,
    cache_dtype: Any = jnp.float32,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Device part of sampling (pure; jit with the keyword arguments static).

    `prefill_params` run the prompt (compute bound: float32 is fastest on CPUs without bf16
    units), `params` run the decode loop (memory bound: bfloat16 weights halve the bytes).

    prompt_tokens [P, L] left-padded, prompt_start [P] first real slot of each row;
    stop_seqs [K, M] int32 right-aligned, left-padded with -1 (rows of all -1 are unused);
    eos_ids [E] (-1 unused). Returns tokens [P*n, max_new] (-1 after a row ended), lengths
    [P*n] (tokens generated including the EOS / stop sequence) and stopped [P*n] flags.

    Prefill and decode are one compiled program, so `tracing.checked` bounds both.
    """
    check_generate_args(
        params, prefill_params, config, prompt_tokens, prompt_start, temperature, top_p, top_k,
        stop_seqs, eos_ids,
    )  # fmt: skip
    num_prompts, prompt_len = prompt_tokens.shape
    rows = num_prompts * n
    scanned = not isinstance(params["layers"], (list, tuple))
    cache = init_cache(
        config,
        num_prompts,
        prompt_len + max_new_tokens,
        cache_dtype,
        start=prompt_start,
        scanned=scanned,
    )
    positions = jnp.maximum(jnp.arange(prompt_len)[None, :] - prompt_start[:, None], 0)
    logits, cache = forward(prefill_params, config, prompt_tokens, positions, cache, last_only=True)
    batch_axis = 1 if scanned else 0
    rep = functools.partial(_repeat_rows, n=n)
    cache = cache.replace(
        k=jax.tree.map(lambda x: rep(x, axis=batch_axis), cache.k),
        v=jax.tree.map(lambda x: rep(x, axis=batch_axis), cache.v),
        start=rep(cache.start, axis=0),
    )
    logits = rep(logits, axis=0)
    row_keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(rows))
    choose = functools.partial(
        _choose,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        greedy=greedy,
        use_top_k=use_top_k,
        use_top_p=use_top_p,
    )

    def step_keys(step: jax.Array) -> jax.Array:
        return jax.vmap(lambda k: jax.random.fold_in(k, step))(row_keys)

    m = stop_seqs.shape[1]
    out0 = jnp.full((rows, m - 1 + max_new_tokens), -1, jnp.int32)  # m-1 leading pad columns
    tok0 = choose(logits, step_keys(jnp.int32(0)))
    state0 = (
        cache,
        tok0,
        jnp.int32(0),
        jnp.zeros((rows,), bool),
        out0,
        jnp.full((rows,), max_new_tokens, jnp.int32),
    )

    def cond(state: Any) -> jax.Array:
        _, _, step, done, _, _ = state
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(state: Any) -> Any:
        cache, tok, step, done, out, lengths = state
        tok = jnp.where(done, -1, tok)
        out = jax.lax.dynamic_update_slice(out, tok[:, None], (0, m - 1 + step))
        window = jax.lax.dynamic_slice(out, (0, step), (rows, m))  # last m tokens
        stop_hit = (
            jnp.all((window[:, None, :] == stop_seqs[None]) | (stop_seqs[None] < 0), axis=-1)
            & jnp.any(stop_seqs >= 0, axis=-1)[None]
        )
        ended = jnp.any(tok[:, None] == eos_ids[None], axis=-1) | jnp.any(stop_hit, axis=-1)
        ended = ended & ~done
        lengths = jnp.where(ended, step + 1, lengths)
        done = done | ended
        position = (prompt_len + step) - cache.start
        logits, cache = forward(
            params, config, jnp.maximum(tok, 0)[:, None], position[:, None], cache
        )
        nxt = choose(logits[:, 0], step_keys(step + 1))
        return cache, nxt, step + 1, done, out, lengths

    _, _, steps, done, out, lengths = jax.lax.while_loop(cond, body, state0)
    lengths = jnp.minimum(lengths, steps)
    return out[:, m - 1 :], lengths, done


class Sampler:
    """Batched sampling from a `LanguageModel`, compiled once per (bucket, n, max_new, mode).

    dtype: weights and KV cache precision for decode ("bfloat16" halves the bytes each decode
    step reads; "float32" reproduces reference logits; benchmarks/RESULTS.md states the speed
    and accuracy of each). prefill_dtype: weights for the prompt pass (default float32: the
    prefill is compute bound, and bfloat16 matmuls measured slower than float32 on an AVX2 CPU);
    when it differs from `dtype` the sampler holds both copies.
    scan_layers: run the layers with `lax.scan` (compiles in constant time for deep models)
    instead of unrolled (faster decode; see model.py).
    mesh: "auto" (`elmjax.mesh.data_mesh`: this process's devices, None for one), a mesh, or
    None. With a mesh the parameters are replicated on every device and the rows of a batch
    (when their number divides the device count) are split over its `data` axis; the samples
    are the same as on one device.
    """

    def __init__(
        self,
        model: LanguageModel,
        *,
        dtype: Any = "float32",
        prefill_dtype: Any = "float32",
        prompt_buckets: Sequence[int] = DEFAULT_PROMPT_BUCKETS,
        batch_buckets: Sequence[int] = DEFAULT_BATCH_BUCKETS,
        add_special_tokens: bool = True,
        scan_layers: bool = False,
        mesh: Any = "auto",
    ) -> None:
        from elmjax.mesh import data_mesh, replicated

        self.mesh = data_mesh() if isinstance(mesh, str) and mesh == "auto" else mesh
        placement = replicated(self.mesh) if self.mesh is not None else None
        self.model = model
        self.config = model.config
        self.tokenizer = model.tokenizer
        self.dtype = jnp.dtype(dtype)
        layout = stack_layers if scan_layers else unstack_layers
        self.params = jax.device_put(layout(cast_params(model.params, self.dtype)), placement)
        self.prefill_dtype = jnp.dtype(prefill_dtype)
        if self.prefill_dtype == self.dtype:
            self.prefill_params = self.params
        else:
            self.prefill_params = jax.device_put(
                layout(cast_params(model.params, self.prefill_dtype)), placement
            )
        self.prompt_buckets = tuple(sorted(prompt_buckets))
        self.batch_buckets = tuple(sorted(batch_buckets))
        self.add_special_tokens = add_special_tokens
        self.eos_ids = self._eos_ids()
        self._generate = jax.jit(
            generate,
            static_argnames=(
                "config",
                "n",
                "max_new_tokens",
                "greedy",
                "use_top_k",
                "use_top_p",
                "cache_dtype",
            ),
        )

    def _rows(self, array: np.ndarray) -> jax.Array:
        """A batch-major array on the device(s): split over the mesh's `data` axis when there
        is one and it divides the rows, else on the default device."""
        if self.mesh is None or array.shape[0] % self.mesh.size:
            return jnp.asarray(array)
        from elmjax.mesh import rows_sharding

        return jax.device_put(array, rows_sharding(self.mesh, array.ndim))

    def _eos_ids(self) -> list[int]:
        ids = set()
        if self.config.eos_token_id is not None:
            ids.add(int(self.config.eos_token_id))
        for name in ("<|endoftext|>", "<|im_end|>", "</s>", "<eos>", "<|end_of_text|>"):
            i = self.tokenizer.token_to_id(name)
            if i is not None:
                ids.add(int(i))
        return sorted(ids)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=self.add_special_tokens).ids

    def stop_array(self, stop: Sequence[str]) -> np.ndarray:
        """Stop strings -> the fixed-shape token table the device checks (host trims exactly)."""
        seqs = []
        for s in stop:
            ids = self.tokenizer.encode(s, add_special_tokens=False).ids
            if 0 < len(ids) <= MAX_STOP_TOKENS:
                seqs.append(ids)
        width = max([len(s) for s in seqs] + [1])
        # fixed shape: MAX_STOP_TOKENS rows padded, so new stop lists do not recompile
        k = max(4, 1 << (len(seqs) - 1).bit_length()) if seqs else 4
        arr = np.full((k, max(width, MAX_STOP_TOKENS)), -1, np.int32)
        for i, s in enumerate(seqs):
            arr[i, arr.shape[1] - len(s) :] = s
        return arr

    def generate_ids(
        self,
        prompt_ids: Sequence[Sequence[int]],
        n: int,
        key: jax.Array,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        stop_ids: np.ndarray | None = None,
        ignore_eos: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Token-level sampling: (tokens [P*n, max_new] with -1 after a row ended, lengths
        [P*n], stopped [P*n]); row i*n + j is sample j of prompt i. `stop_ids` comes from
        `stop_array`; `ignore_eos` decodes max_new_tokens for every row (benchmarks)."""
        if not prompt_ids:
            raise ValueError("no prompts")
        if n < 1 or max_new_tokens < 1:
            raise ValueError("n and max_new_tokens must be >= 1")
        if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
            raise ValueError("need temperature >= 0, 0 < top_p <= 1, top_k >= 0")
        limit = self.config.max_seq_len - max_new_tokens if self.config.arch == "gpt2" else None
        if limit is not None and limit < 1:
            raise ValueError(
                f"max_new_tokens exceeds the model's {self.config.max_seq_len} positions"
            )
        encoded = [list(ids[-limit:] if limit else ids) or [self._pad_id()] for ids in prompt_ids]
        longest = max(len(ids) for ids in encoded)
        length = _bucket(longest, self.prompt_buckets)
        if limit is not None:
            length = min(length, max(limit, longest))
        batch = _bucket(len(encoded), self.batch_buckets)
        tokens = np.full((batch, length), self._pad_id(), np.int32)
        start = np.full((batch,), length - 1, np.int32)
        for i, ids in enumerate(encoded):
            tokens[i, length - len(ids) :] = ids
            start[i] = length - len(ids)
        tokens[len(encoded) :, -1] = tokens[0, -1]  # padding rows: one real token, discarded
        eos = np.full((4,), -1, np.int32)
        if not ignore_eos:
            eos[: len(self.eos_ids[:4])] = self.eos_ids[:4]
        if stop_ids is None:
            stop_ids = self.stop_array(())
        greedy = temperature == 0
        out, lengths, stopped = self._generate(
            self.params,
            self.prefill_params,
            self.config,
            self._rows(tokens),
            self._rows(start),
            key,
            jnp.float32(max(temperature, 1e-6)),
            jnp.float32(top_p),
            jnp.int32(top_k),
            jnp.asarray(stop_ids),
            jnp.asarray(eos),
            n=n,
            max_new_tokens=max_new_tokens,
            greedy=greedy,
            use_top_k=(not greedy) and top_k > 0,
            use_top_p=(not greedy) and top_p < 1.0,
            cache_dtype=self.dtype,
        )
        out, lengths, stopped = jax.device_get((out, lengths, stopped))
        rows = len(encoded) * n
        return np.asarray(out[:rows]), np.asarray(lengths[:rows]), np.asarray(stopped[:rows])

    def sample_detailed(
        self,
        prompts: Sequence[str],
        n: int,
        key: jax.Array,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        stop: Sequence[str] = (),
    ) -> SampleResult:
        """Texts (trimmed at the first stop string or EOS), raw token ids and stop flags."""
        if not prompts:
            return SampleResult([], [], [])
        if isinstance(stop, str):
            stop = [stop]
        out, lengths, stopped = self.generate_ids(
            [self.encode(p) for p in prompts],
            n,
            key,
            max_new_tokens,
            temperature,
            top_p,
            top_k,
            self.stop_array(stop),
        )
        texts, toks, flags = [], [], []
        for i in range(len(prompts)):
            row_t, row_k, row_f = [], [], []
            for j in range(n):
                r = i * n + j
                ids = [int(t) for t in out[r, : lengths[r]]]
                text, hit = self._trim(ids, stop)
                row_t.append(text)
                row_k.append(ids)
                row_f.append(bool(stopped[r]) or hit)
            texts.append(row_t)
            toks.append(row_k)
            flags.append(row_f)
        return SampleResult(texts, toks, flags)

    def sample(
        self,
        prompts: Sequence[str],
        n: int,
        key: jax.Array,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        stop: Sequence[str] = (),
    ) -> list[list[str]]:
        """`n` completions for each prompt: result[i][j] is sample j of prompts[i]."""
        return self.sample_detailed(
            prompts, n, key, max_new_tokens, temperature, top_p, top_k, stop
        ).texts

    def _pad_id(self) -> int:
        return self.eos_ids[0] if self.eos_ids else 0

    def _trim(self, ids: list[int], stop: Sequence[str]) -> tuple[str, bool]:
        """Text of `ids` before the first EOS, cut before the first stop string."""
        hit = False
        for i, t in enumerate(ids):
            if t in self.eos_ids:
                ids, hit = ids[:i], True
                break
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        cut = min((text.find(s) for s in stop if s and s in text), default=-1)
        if cut >= 0:
            return text[:cut], True
        return text, hit
