"""Jit-compiled batched sampling with a KV cache (docs/architecture.md, "Language model").

One call samples `n` completions for each of a batch of prompts:

1. Prompts are tokenized on the host and split by length into a few groups (`prompt_groups`:
   a pure function of the batch's prompt lengths, so every slice of a batch reproduces it).
   Each group runs as one compiled call: its prompts LEFT-padded to the group's length bucket
   and its rows to a batch bucket, so shapes (and therefore compiled programs) repeat across
   generations, and a short prompt never pays for the longest one's prefill (whose attention
   grows with the square of the padded length). Results come back in the prompts' order.
2. One prefill per prompt fills the KV cache; the cache and the last logits are then repeated
   `n` times along the batch axis, so the n samples of a prompt share its prefill.
3. `lax.while_loop`s decode one token per step for all rows, with temperature, top-k and top-p,
   until every row has emitted EOS or a stop token sequence, or `max_new_tokens` is reached.
   Finished rows keep running (static shapes) but their output is frozen. The decode runs in
   length buckets of the cache (`decode_windows`): each loop's cache holds only the slots its
   last step can fill (it grows between loops), so a step attends to that window and no more.
4. On the host, text is decoded and cut at the first exact stop string (the device check on
   token sequences only ends rows early; a stop string tokenized differently is still caught).

The decoder is a `flax.nnx` module: the sampler splits it once into (graph, state) and the
jit-compiled `generate` merges the graph with the state it is given, so parameters are traced
arrays (never baked-in constants) and one compiled program serves every call of a shape.

Randomness is per row: row r (prompt i, sample j) draws step s from
fold_in(fold_in(key, first_row + r), s), so a row's sample depends only on the key, its prompt
and its index, never on the batch padding, its length group or on other prompts in the call.
`first_row` is the index of the call's first row in a larger batch that several calls (the
processes of a multi-process run) share: each draws exactly what one call over the whole batch
would.

On CPU the program is compiled with XLA's region-based copy insertion: with the default
analysis, every layer's KV cache, read and updated in place inside the decode `while_loop`, was
copied twice per decode step (measured: 75 -> 31 ms per step for elm-tiny at batch 32 with a
512-slot cache), so each step cost the whole cache's size instead of the window it reads.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from elmjax import tracing
from elmjax.lm.bundle import LanguageModel
from elmjax.lm.choice import choose_tokens
from elmjax.lm.contracts import check_generate_args
from elmjax.lm.model import decode_layout, init_cache
from elmjax.lm.partitioning import shard_state
from elmjax.lm.state import cast_state, stack_layers, unstack_layers
from elmjax.mesh import DATA

#: prompt length buckets: four per octave (x1, x1.25, x1.5, x1.75) from 32 to 8192 tokens, so a
#: prompt pads by at most 25% (powers of two padded a 1126-token prompt to 2048)
DEFAULT_PROMPT_BUCKETS = tuple(
    b
    for k in range(5, 14)
    for b in (2**k, 5 * 2 ** (k - 2), 3 * 2 ** (k - 1), 7 * 2 ** (k - 2))
    if b <= 8192
)
MAX_PROMPT_GROUPS = 4  # length groups (compiled calls) per sampling call at most
#: cost model of `prompt_groups`, in padded prompt tokens: a token's attention costs
#: length / ATTENTION_TOKENS of its matmuls, and a group costs GROUP_TOKENS of its own (its
#: decode loop and dispatch)
ATTENTION_TOKENS = 512
GROUP_TOKENS = 2048
#: batch buckets (prompts per call): powers of two and 1.5x between them, so a length group of
#: 5 prompts pads to 6 rows, not 8 (on a mesh only those the `data` axis divides are added)
DEFAULT_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
MAX_STOP_TOKENS = 8  # longest stop token sequence checked on device (longer ones: host only)
MIN_WINDOW_STEPS = 32  # decode steps below which a cache-length bucket is not worth a loop


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


def prompt_groups(
    lengths: Sequence[int], buckets: Sequence[int], max_groups: int = MAX_PROMPT_GROUPS
) -> dict[int, int]:
    """Padded length of each prompt length of a batch: {length: padded length}.

    The batch's distinct length buckets are split into at most `max_groups` runs of
    consecutive buckets (shortest first); the prompts of a run pad to the run's longest bucket
    and run as one call. The split minimises a cost model of the padded prefill, sum over
    groups of rows x padded x (1 + padded / ATTENTION_TOKENS), plus GROUP_TOKENS per group, by
    dynamic programming. It is a pure function of the multiset of lengths: a process that
    samples a slice of a batch, given the whole batch's lengths, pads each of its prompts
    exactly as one call over the whole batch does (so its rows run the same arithmetic).
    """
    if not lengths:
        return {}
    padded = sorted({_bucket(n, buckets) for n in lengths})
    rows = [sum(_bucket(n, buckets) == b for n in lengths) for b in padded]
    k = len(padded)

    def cost(i: int, j: int) -> float:  # buckets i..j-1 in one group, padded to padded[j - 1]
        pad = padded[j - 1]
        return sum(rows[i:j]) * pad * (1 + pad / ATTENTION_TOKENS) + GROUP_TOKENS

    # best[g][j]: least cost of the first j buckets in g groups; cut[g][j]: start of the last
    inf = float("inf")
    best = [[inf] * (k + 1) for _ in range(max_groups + 1)]
    cut = [[0] * (k + 1) for _ in range(max_groups + 1)]
    best[0][0] = 0.0
    for g in range(1, max_groups + 1):
        for j in range(1, k + 1):
            for i in range(j):
                c = best[g - 1][i] + cost(i, j)
                if c < best[g][j]:  # strict: ties keep the earliest cut (deterministic)
                    best[g][j], cut[g][j] = c, i
    groups = min(range(1, max_groups + 1), key=lambda g: (best[g][k], g))
    pad_of: dict[int, int] = {}
    j = k
    for g in range(groups, 0, -1):
        i = cut[g][j]
        for b in padded[i:j]:
            pad_of[b] = padded[j - 1]
        j = i
    return {n: pad_of[_bucket(n, buckets)] for n in set(lengths)}


def decode_windows(prompt_len: int, max_new_tokens: int) -> tuple[tuple[int, int], ...]:
    """(last decode step + 1, cache slots attended) of each decode loop.

    Step s writes cache slot prompt_len + s, so a loop ending at step e needs slots
    [0, prompt_len + e). Long decodes run in three loops (to a quarter, a half and all of
    max_new_tokens), shorter ones in two or one: each loop is compiled separately, so a few
    buckets keep compile time low while the attention reads on average little more than the
    filled part of the cache.
    """
    if max_new_tokens >= 4 * MIN_WINDOW_STEPS:
        ends = (max_new_tokens // 4, max_new_tokens // 2, max_new_tokens)
    elif max_new_tokens >= 2 * MIN_WINDOW_STEPS:
        ends = (max_new_tokens // 2, max_new_tokens)
    else:
        ends = (max_new_tokens,)
    return tuple((e, prompt_len + e) for e in ends)


def _repeat_rows(x: jax.Array, n: int, axis: int) -> jax.Array:
    return x if n == 1 else jnp.repeat(x, n, axis=axis)


@tracing.checked
def generate(
    graph: nnx.GraphDef,
    state: nnx.State,
    prefill_state: nnx.State,
    prompt_tokens: jax.Array,
    prompt_start: jax.Array,
    key: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    top_k: jax.Array,
    stop_seqs: jax.Array,
    eos_ids: jax.Array,
    first_row: jax.Array | int = 0,
    *,
    n: int,
    max_new_tokens: int,
    greedy: bool,
    use_top_k: bool,
    use_top_p: bool,
    cache_dtype: Any = jnp.float32,
    kernels_out_in: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Device part of sampling (pure; jit with `graph` bound and the keywords static).

    `graph` is the decoder's `nnx.GraphDef`; `prefill_state` runs the prompt (compute bound:
    float32 is fastest on CPUs without bf16 units), `state` runs the decode loop (memory
    bound: bfloat16 weights halve the bytes).

    prompt_tokens [P, L] left-padded, prompt_start [P] first real slot of each row;
    stop_seqs [K, M] int32 right-aligned, left-padded with -1 (rows of all -1 are unused);
    eos_ids [E] (-1 unused); first_row: int32, the index of row 0 in a batch shared by
    several calls (a scalar; traced: one compiled program serves every offset), or [P], the
    index in that batch of each prompt's first row (its samples follow it: a length group
    whose prompts are not consecutive). Returns tokens [P*n, max_new] (-1 after a row ended), lengths
    [P*n] (tokens generated including the EOS / stop sequence) and stopped [P*n] flags.

    `kernels_out_in`: the decode loop's dense kernels are transposed to [out, in] once per call
    (`model.decode_layout`: XLA:CPU's few-row dots read them faster; the prefill keeps [in, out]).

    Prefill and decode are one compiled program, so `tracing.checked` bounds both.
    """
    model = nnx.merge(graph, state)
    prefill_model = nnx.merge(graph, prefill_state)
    config = model.config
    check_generate_args(
        model, prefill_model, prompt_tokens, prompt_start, temperature, top_p, top_k,
        stop_seqs, eos_ids,
    )  # fmt: skip
    if kernels_out_in:
        model = decode_layout(model)
    num_prompts, prompt_len = prompt_tokens.shape
    rows = num_prompts * n
    scanned = model.scanned
    windows = decode_windows(prompt_len, max_new_tokens)
    cache = init_cache(
        config,
        num_prompts,
        windows[0][1],  # the first loop's slots; the cache grows between loops
        cache_dtype,
        start=prompt_start,
        scanned=scanned,
    )
    positions = jnp.maximum(jnp.arange(prompt_len)[None, :] - prompt_start[:, None], 0)
    logits, cache = prefill_model(prompt_tokens, positions, cache, last_only=True, fresh_cache=True)
    batch_axis = 1 if scanned else 0
    rep = functools.partial(_repeat_rows, n=n)
    cache = cache.replace(
        k=jax.tree.map(lambda x: rep(x, axis=batch_axis), cache.k),
        v=jax.tree.map(lambda x: rep(x, axis=batch_axis), cache.v),
        start=rep(cache.start, axis=0),
    )
    logits = rep(logits, axis=0)
    first_row = jnp.asarray(first_row, jnp.int32)
    if first_row.ndim == 0:
        first_row = first_row + n * jnp.arange(num_prompts, dtype=jnp.int32)
    row_index = (first_row[:, None] + jnp.arange(n, dtype=jnp.int32)[None]).reshape(rows)
    row_keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(row_index)
    choose = functools.partial(
        choose_tokens,
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
    stop_wild = stop_seqs[None] < 0  # padding slots of a stop sequence match anything
    stop_live = jnp.any(stop_seqs >= 0, axis=-1)[None]  # all-padding rows never stop
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

    def loop(end: int, window: int) -> tuple[Any, Any]:
        def cond(carry: Any) -> jax.Array:
            _, _, step, done, _, _ = carry
            return (step < end) & ~jnp.all(done)

        def body(carry: Any) -> Any:
            cache, tok, step, done, out, lengths = carry
            tok = jnp.where(done, -1, tok)
            out = jax.lax.dynamic_update_slice(out, tok[:, None], (0, m - 1 + step))
            last = jax.lax.dynamic_slice(out, (0, step), (rows, m))  # last m tokens
            stop_hit = (
                jnp.all((last[:, None, :] == stop_seqs[None]) | stop_wild, axis=-1) & stop_live
            )
            ended = jnp.any(tok[:, None] == eos_ids[None], axis=-1) | jnp.any(stop_hit, axis=-1)
            ended = ended & ~done
            lengths = jnp.where(ended, step + 1, lengths)
            done = done | ended
            position = (prompt_len + step) - cache.start
            logits, cache = model(
                jnp.maximum(tok, 0)[:, None], position[:, None], cache, window=window
            )
            nxt = choose(logits[:, 0], step_keys(step + 1))
            return cache, nxt, step + 1, done, out, lengths

        return cond, body

    slot_axis = 3 if scanned else 2

    def grow(x: jax.Array, slots: int) -> jax.Array:
        pad = [(0, 0)] * x.ndim
        pad[slot_axis] = (0, slots - x.shape[slot_axis])
        return jnp.pad(x, pad)

    carry = state0
    for end, window in windows:
        # each loop's cache holds exactly the slots it attends to: the attention reads the
        # whole buffer, which the step updates in place (a window sliced out of a longer cache
        # is a copy per layer per step on CPU); growing it costs one copy per loop
        cache = carry[0]
        carry = (
            cache.replace(
                k=jax.tree.map(lambda x, w=window: grow(x, w), cache.k),
                v=jax.tree.map(lambda x, w=window: grow(x, w), cache.v),
            ),
            *carry[1:],
        )
        carry = jax.lax.while_loop(*loop(end, window), carry)
    _, _, steps, done, out, lengths = carry
    lengths = jnp.minimum(lengths, steps)
    return out[:, m - 1 :], lengths, done


def compiler_options() -> dict[str, Any]:
    """XLA options of the sampler's program: on CPU, region-based copy insertion, which keeps
    the decode loop's in-place KV cache updates in place (see the module docstring)."""
    if jax.default_backend() == "cpu":
        return {"xla_cpu_copy_insertion_use_region_analysis": True}
    return {}


@functools.cache
def cpu_has_native_bfloat16() -> bool:
    """Whether this host's CPU multiplies bfloat16 natively (x86 AVX512-BF16 or AMX-BF16, as
    Linux reports them in /proc/cpuinfo). False where that file is missing or says otherwise."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def auto_prefill_dtype(dtype: Any) -> jnp.dtype:
    """The prefill's weights for a sampler decoding in `dtype`.

    float32 decode: float32. Otherwise `dtype` on an accelerator, or on a CPU with native
    bfloat16 units; float32 on any other CPU. Why: the prefill is compute bound. A prompt-sized
    bfloat16 dot ([2048, 576] x [576, 1536]) ran 1.3x slower than float32 on an AVX2 CPU, and
    2.7x faster on an AVX512-BF16 / AMX one (benchmarks/RESULTS.md).
    """
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float32 or jax.default_backend() != "cpu":
        return dtype
    return dtype if dtype == jnp.bfloat16 and cpu_has_native_bfloat16() else jnp.dtype("float32")


class Sampler:
    """Batched sampling from a `LanguageModel`, compiled once per (bucket, n, max_new, mode).

    dtype: weights and KV cache precision for decode ("bfloat16" halves the bytes each decode
    step reads; "float32" reproduces reference logits; benchmarks/RESULTS.md states the speed
    and accuracy of each). prefill_dtype: weights for the prompt pass; "auto" (default) is
    `auto_prefill_dtype`: the prefill is compute bound, so it runs in `dtype` only where
    bfloat16 arithmetic is native. When it differs from `dtype` the sampler holds both copies.
    scan_layers: run the layers with `lax.scan` (compiles in constant time for deep models)
    instead of unrolled (faster decode; see model.py).
    mesh: "auto" (`elmjax.mesh.data_mesh`: this process's devices, None for one; with
    `model_parallel` > 1, `elmjax.mesh.make_mesh(model_parallel)`), a mesh, or None. With a
    mesh the parameters are laid out by the rule table of `partitioning.py` (replicated unless
    the mesh has a `model` axis wider than 1, which splits heads, MLP and vocabulary) and the
    rows of a batch (when their number divides the `data` axis) are split over `data`; XLA
    partitions the whole compiled sampler, and the samples are the same as on one device.
    max_groups: length groups per call at most (`prompt_groups`; 1: the whole batch pads to
    its longest prompt's bucket).
    """

    def __init__(
        self,
        model: LanguageModel,
        *,
        dtype: Any = "float32",
        prefill_dtype: Any = "auto",
        prompt_buckets: Sequence[int] = DEFAULT_PROMPT_BUCKETS,
        batch_buckets: Sequence[int] = DEFAULT_BATCH_BUCKETS,
        add_special_tokens: bool = True,
        scan_layers: bool = False,
        mesh: Any = "auto",
        model_parallel: int = 1,
        max_groups: int = MAX_PROMPT_GROUPS,
    ) -> None:
        from elmjax.mesh import data_mesh, make_mesh

        self.model = model
        self.config = model.config
        self.tokenizer = model.tokenizer
        self.dtype = jnp.dtype(dtype)
        layout = stack_layers if scan_layers else unstack_layers
        # split once: the graph is bound into the jitted function, the states are its inputs
        self.graph, state = nnx.split(layout(model.decoder))
        if isinstance(mesh, str) and mesh == "auto":
            mesh = make_mesh(model_parallel) if model_parallel > 1 else data_mesh()
        self.mesh = mesh

        def place(s: Any) -> Any:  # sharded over the mesh's `model` axis, or on one device
            return jax.device_put(s) if mesh is None else shard_state(s, mesh)

        self.state = place(cast_state(state, self.dtype))
        if isinstance(prefill_dtype, str) and prefill_dtype == "auto":
            prefill_dtype = auto_prefill_dtype(self.dtype)
        self.prefill_dtype = jnp.dtype(prefill_dtype)
        if self.prefill_dtype == self.dtype:
            self.prefill_state = self.state
        else:
            self.prefill_state = place(cast_state(state, self.prefill_dtype))
        self.prompt_buckets = tuple(sorted(prompt_buckets))
        data = 1 if mesh is None else mesh.shape.get(DATA, 1)
        self.batch_buckets = tuple(
            sorted(b for b in batch_buckets if data == 1 or b % data == 0 or b & (b - 1) == 0)
        )
        self.add_special_tokens = add_special_tokens
        self.eos_ids = self._eos_ids()
        self.max_groups = max_groups
        self._generate = jax.jit(
            functools.partial(generate, self.graph),
            compiler_options=compiler_options(),
            static_argnames=(
                "n",
                "max_new_tokens",
                "greedy",
                "use_top_k",
                "use_top_p",
                "cache_dtype",
                "kernels_out_in",
            ),
        )

    def decoder(self, prefill: bool = False) -> Any:
        """The decoder as this sampler runs it (decode or prefill dtype, its layer layout)."""
        return nnx.merge(self.graph, self.prefill_state if prefill else self.state)

    def _eos_ids(self) -> list[int]:
        ids = set()
        if self.config.eos_token_id is not None:
            ids.add(int(self.config.eos_token_id))
        for name in ("<|endoftext|>", "<|im_end|>", "</s>", "<eos>", "<|end_of_text|>"):
            i = self.tokenizer.token_to_id(name)
            if i is not None:
                ids.add(int(i))
        return sorted(ids)

    def _rows(self, array: np.ndarray) -> jax.Array:
        """A batch-major array on the device(s): split over the mesh's `data` axis when there
        is one and it divides the rows, else on the default device."""
        if self.mesh is None or array.shape[0] % self.mesh.shape[DATA]:
            return jnp.asarray(array)
        from elmjax.mesh import rows_sharding

        return jax.device_put(array, rows_sharding(self.mesh, array.ndim))

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
        first_row: int = 0,
        min_prompt_len: int = 0,
        batch_lengths: Sequence[int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Token-level sampling: (tokens [P*n, max_new] with -1 after a row ended, lengths
        [P*n], stopped [P*n]); row i*n + j is sample j of prompt i. `stop_ids` comes from
        `stop_array`; `ignore_eos` decodes max_new_tokens for every row (benchmarks).

        The prompts run in length groups (`prompt_groups`), one compiled call each. A call
        that samples one slice of a larger batch gives `first_row` (the index of its row 0 in
        that batch: the rows draw their random streams by global index) and `batch_lengths`
        (the token lengths of every prompt of the whole batch, its own included: each of its
        prompts then pads to the length the whole batch's grouping gives it, so its rows run
        the same shapes, and the same float arithmetic, as in one call over the whole batch).
        `min_prompt_len` instead pads every prompt to the bucket of at least that length, in
        one group."""
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
        if min_prompt_len:  # one group, padded as a batch whose longest prompt is that long
            longest = max(max(len(ids) for ids in encoded), min_prompt_len)
            pad_of = {len(ids): _bucket(longest, self.prompt_buckets) for ids in encoded}
        else:
            if batch_lengths is None:
                batch_lengths = [len(ids) for ids in encoded]
            elif limit:
                batch_lengths = [max(min(n, limit), 1) for n in batch_lengths]
            pad_of = prompt_groups(batch_lengths, self.prompt_buckets, self.max_groups)
        if limit is not None:  # GPT-2's learned positions end at max_seq_len
            pad_of = {n: min(p, max(limit, n)) for n, p in pad_of.items()}
        missing = {len(ids) for ids in encoded} - set(pad_of)
        if missing:
            raise ValueError(f"batch_lengths lacks the prompt lengths {sorted(missing)}")
        eos = np.full((4,), -1, np.int32)
        if not ignore_eos:
            eos[: len(self.eos_ids[:4])] = self.eos_ids[:4]
        if stop_ids is None:
            stop_ids = self.stop_array(())
        greedy = temperature == 0
        settings = (
            key,
            jnp.float32(max(temperature, 1e-6)),
            jnp.float32(top_p),
            jnp.int32(top_k),
            jnp.asarray(stop_ids),
            jnp.asarray(eos),
        )
        static = dict(
            n=n,
            max_new_tokens=max_new_tokens,
            greedy=greedy,
            use_top_k=(not greedy) and top_k > 0,
            use_top_p=(not greedy) and top_p < 1.0,
            cache_dtype=self.dtype,
            kernels_out_in=jax.default_backend() == "cpu",
        )
        rows = len(encoded) * n
        out = np.full((rows, max_new_tokens), -1, np.int32)
        lengths = np.zeros((rows,), np.int32)
        stopped = np.zeros((rows,), bool)

        def run_group(length: int) -> tuple[list[int], Any]:
            members = [i for i, ids in enumerate(encoded) if pad_of[len(ids)] == length]
            batch = _bucket(len(members), self.batch_buckets)
            tokens = np.full((batch, length), self._pad_id(), np.int32)
            start = np.full((batch,), length - 1, np.int32)
            for r, i in enumerate(members):
                ids = encoded[i]
                tokens[r, length - len(ids) :] = ids
                start[r] = length - len(ids)
            tokens[len(members) :, -1] = tokens[0, -1]  # padding rows: one real token, discarded
            # each prompt's first row in the whole batch (padding rows: past the end, discarded)
            first = first_row + n * np.concatenate(
                [np.asarray(members), len(encoded) + np.arange(batch - len(members))]
            ).astype(np.int32)
            result = self._generate(
                self.state,
                self.prefill_state,
                self._rows(tokens),
                self._rows(start),
                *settings,
                self._rows(first),
                **static,
            )
            return members, jax.device_get(result)

        group_lengths = sorted(set(pad_of[len(ids)] for ids in encoded))
        if len(group_lengths) > 1 and (self.mesh is None or self.mesh.size == 1):
            # groups are independent programs: compiling and running them side by side keeps
            # both cores of a small host busy (a small group's decode loop is mostly dispatch);
            # each is deterministic, so the order they finish in changes nothing
            with ThreadPoolExecutor(len(group_lengths)) as pool:
                results = list(pool.map(run_group, group_lengths))
        else:  # one program at a time: a sharded one may hold collectives across devices
            results = [run_group(length) for length in group_lengths]
        for members, (g_out, g_len, g_stop) in results:
            at = (np.asarray(members)[:, None] * n + np.arange(n)[None]).reshape(-1)
            k = len(members) * n
            out[at], lengths[at], stopped[at] = g_out[:k], g_len[:k], g_stop[:k]
        return out, lengths, stopped

    def sample_detailed(
        self,
        prompts: Sequence[str | Sequence[int]],
        n: int,
        key: jax.Array,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        stop: Sequence[str] = (),
        first_row: int = 0,
        min_prompt_len: int = 0,
        batch_lengths: Sequence[int] | None = None,
    ) -> SampleResult:
        """Texts (trimmed at the first stop string or EOS), raw token ids and stop flags;
        `first_row`, `min_prompt_len` and `batch_lengths` as in `generate_ids`. A prompt is
        text or its token ids (for a prompt that must end on a token boundary of another
        tokenization, e.g. a program cut in half)."""
        if not prompts:
            return SampleResult([], [], [])
        if isinstance(stop, str):
            stop = [stop]
        out, lengths, stopped = self.generate_ids(
            [self.encode(p) if isinstance(p, str) else [int(t) for t in p] for p in prompts],
            n,
            key,
            max_new_tokens,
            temperature,
            top_p,
            top_k,
            self.stop_array(stop),
            first_row=first_row,
            min_prompt_len=min_prompt_len,
            batch_lengths=batch_lengths,
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
        prompts: Sequence[str | Sequence[int]],
        n: int,
        key: jax.Array,
        max_new_tokens: int = 128,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        stop: Sequence[str] = (),
        first_row: int = 0,
        min_prompt_len: int = 0,
        batch_lengths: Sequence[int] | None = None,
    ) -> list[list[str]]:
        """`n` completions for each prompt: result[i][j] is sample j of prompts[i]
        (`first_row`, `min_prompt_len`, `batch_lengths`: a slice of a larger batch, as in
        `generate_ids`)."""
        return self.sample_detailed(
            prompts,
            n,
            key,
            max_new_tokens,
            temperature,
            top_p,
            top_k,
            stop,
            first_row=first_row,
            min_prompt_len=min_prompt_len,
            batch_lengths=batch_lengths,
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
