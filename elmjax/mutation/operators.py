"""Mutation operators: one batched interface for GP and for the language-model operators.

    op = make_operator("diff", model="elm-tiny")
    children = op.mutate(parents, n=4, seed=7)     # 4 children per parent, parent-major order

Every operator returns one `Child` per (parent, sample), in order: children[i * n + j] is sample
j of parents[i]. A child records everything the program store keeps about where it came from
(operator, parents, model, temperature, prompt, raw model output) and, when the operator could
not produce program text, why (`error_kind`: `apply` for a diff that does not apply, `parse`
for program text that is not Python, `gp` when no GP mutation exists, `empty` for no output).
Whether the text is a *valid* program is the sandbox's job, not the operator's.

The operators, as the ELM paper compares them:

- `gp`: the baseline, AST mutations (`gp.py`), no model.
- `diff`: the ELM diff prompt (`<NME> <BEF> <MSG> <DFF>`, a commit message drawn with the
  paper's probabilities); the model writes a unified diff, applied tolerantly (by content; a
  numbered diff also by line number, `diff_format.apply_numbered`).
- `prompt`: a plain code model sees the parent with its entry function renamed `<entry>_old`, a
  comment asking for a new version, and the entry function's own header (`def <entry>():`);
  the completion (the body) replaces the entry function's body in the parent.
- `crossover`: LMX-style; two parents listed as examples in one prompt and the model writes a
  third program.

LM operators batch: all prompts of a `mutate` call go into one `Sampler.sample` call (n samples
per prompt sharing its prefill). Determinism: same parents, n and seed => same children, and
the same children however the batch is split between processes (`part`): every random draw of
a child (its GP stream, commit message, crossover partner, sampled tokens) is keyed by the
child's index in the whole batch, and a slice's prompts are padded as the whole batch pads them
(the sampler's length groups are a function of the whole batch's prompt lengths), so a slice
runs the same arithmetic as the whole batch does.
"""

from __future__ import annotations

import ast
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from elmjax.mutation import gp
from elmjax.mutation.diff_format import (
    DEFAULT_FILE,
    MESSAGES,
    STOP,
    DiffFormat,
    get_format,
    sample_message,
)

OPERATORS = ("gp", "diff", "prompt", "crossover")
#: Default model per LM operator: the diff model ships with elmjax; prompt and crossover want a
#: general code model.
DEFAULT_MODELS = {"diff": "elm-tiny", "prompt": "smollm2-135m", "crossover": "smollm2-135m"}


@dataclass(frozen=True)
class Child:
    """One mutation outcome. `text` is None exactly when `error_kind` is set."""

    text: str | None
    parent_ids: tuple[int, ...]
    operator: str
    model: str | None = None
    temperature: float | None = None
    prompt: str | None = None
    raw_output: str | None = None
    error_kind: str | None = None
    error_message: str | None = None
    detail: str | None = None  # GP: what was mutated; diff: the commit message

    @property
    def ok(self) -> bool:
        return self.text is not None


def _ids(parents: Sequence[str], parent_ids: Sequence[int] | None) -> list[int]:
    if parent_ids is None:
        return list(range(len(parents)))
    if len(parent_ids) != len(parents):
        raise ValueError("parent_ids must have one id per parent")
    return [int(i) for i in parent_ids]


def _rng(seed: int, *path: int) -> random.Random:
    """A stream per (seed, parent index, sample index): a child never depends on its batch."""
    return random.Random(repr((int(seed),) + tuple(int(p) for p in path)))


def _part(parents: Sequence[Any], part: tuple[int, int] | None, offset: int) -> tuple[int, int]:
    """The (lo, hi) parents of `parents` to make children for (see `Operator.mutate`)."""
    if part is None:
        return 0, len(parents)
    lo, hi = int(part[0]), int(part[1])
    if offset or not 0 <= lo <= hi <= len(parents):
        raise ValueError(f"part {part} must lie within the {len(parents)} parents (and no offset)")
    return lo, hi


class Operator:
    """Base class: `name`, `model_name`, and batched `mutate`."""

    name: str = ""
    model_name: str | None = None

    def mutate(
        self,
        parents: Sequence[str],
        n: int,
        seed: int,
        parent_ids: Sequence[int] | None = None,
        offset: int = 0,
        part: tuple[int, int] | None = None,
    ) -> list[Child]:
        """`n` children per parent, children[i * n + j] from parents[i].

        Several processes share one generation's batch: `parents` is the whole batch and
        `part=(lo, hi)` the slice this call makes children for (`n * (hi - lo)` children, of
        parents[lo:hi]); the other parents are context (crossover partners, the prompts'
        length groups). A caller that holds only its slice passes it with `offset`, the index
        of `parents[0]` in the whole batch, instead (the LM operators then group and pad the
        slice's prompts by their own lengths, which may differ from the whole batch's). Either
        way every random draw of a child comes from its index in the whole batch, so the
        children do not depend on how the batch is split."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, model={self.model_name!r})"


class GPOperator(Operator):
    """The GP baseline: `steps` AST mutations per child (`gp.mutate_n`)."""

    name = "gp"

    def __init__(self, steps: int = 1, kinds: dict[str, float] | None = None) -> None:
        self.steps = steps
        self.kinds = kinds

    def mutate(self, parents, n, seed, parent_ids=None, offset=0, part=None):
        ids = _ids(parents, parent_ids)
        lo, hi = _part(parents, part, offset)
        out = []
        for i in range(lo, hi):
            pid, parent = ids[i], parents[i]
            for j in range(n):
                rng = _rng(seed, offset + i, j)
                try:
                    text = parent
                    details = []
                    for _ in range(self.steps):
                        m = gp.mutate(text, rng, self.kinds)
                        text = m.text
                        details.append(f"{m.kind}: {m.detail}")
                    out.append(Child(text, (pid,), self.name, detail="; ".join(details)))
                except (gp.GPError, SyntaxError, ValueError) as err:
                    kind = "parse" if isinstance(err, SyntaxError) else "gp"
                    out.append(
                        Child(
                            None, (pid,), self.name, error_kind=kind, error_message=str(err)[:300]
                        )
                    )
        return out


class LMOperator(Operator):
    """Shared machinery of the LM operators: the model, its sampler, the sampling settings."""

    default_max_new_tokens = 256

    def __init__(
        self,
        model: Any = None,
        *,
        temperature: float = 0.8,
        top_p: float = 0.95,
        top_k: int = 0,
        max_new_tokens: int | None = None,
        dtype: str = "float32",
        entry: str = "make_walker",
        sampler: Any = None,
        model_parallel: int = 1,
    ) -> None:
        model = model if model is not None else DEFAULT_MODELS[self.name]
        self._model = model
        self.model_name = model if isinstance(model, str) else getattr(model, "name", "model")
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.max_new_tokens = max_new_tokens or self.default_max_new_tokens
        self.dtype = dtype
        self.entry = entry
        self.model_parallel = model_parallel
        self._sampler = sampler

    @property
    def sampler(self) -> Any:
        """Built on first use, so making an operator never loads a model."""
        if self._sampler is None:
            from elmjax.lm.sampler import Sampler

            model = self._model
            if isinstance(model, str):
                from elmjax.lm import load_model

                model = load_model(model)
            self._sampler = Sampler(model, dtype=self.dtype, model_parallel=self.model_parallel)
        return self._sampler

    def _sample(
        self,
        prompts: list[str],
        n: int,
        seed: int,
        stop: Sequence[str],
        first_row: int = 0,
        batch_lengths: list[int] | None = None,
    ) -> list[list[str]]:
        import jax

        # only a slice of a larger batch needs these (a sampler of one's own may lack them)
        part: dict[str, Any] = {"first_row": first_row} if first_row else {}
        if batch_lengths is not None:
            part["batch_lengths"] = batch_lengths
        return self.sampler.sample(
            prompts,
            n,
            jax.random.key(seed),
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            stop=list(stop),
            **part,
        )

    def _sample_part(
        self,
        prompts: list[str],
        lo: int,
        hi: int,
        offset: int,
        n: int,
        seed: int,
        stop: Sequence[str],
    ) -> list[list[str]]:
        """Samples of prompts[lo:hi] as one call over all `prompts` would draw them: rows keyed
        by their index in the whole batch, each prompt padded to the length its group in the
        whole batch has (the sampler's length groups are a function of all the lengths)."""
        if lo == 0 and hi == len(prompts):
            return self._sample(prompts, n, seed, stop, first_row=offset * n)
        lengths = [len(self.sampler.encode(p)) for p in prompts]
        return self._sample(
            prompts[lo:hi], n, seed, stop, first_row=(offset + lo) * n, batch_lengths=lengths
        )

    def _child(self, pids: tuple[int, ...], prompt: str, raw: str, **kw: Any) -> Child:
        return Child(
            parent_ids=pids,
            operator=self.name,
            model=self.model_name,
            temperature=self.temperature,
            prompt=prompt,
            raw_output=raw,
            **kw,
        )

    def _failed(
        self, pids: tuple[int, ...], prompt: str, raw: str, kind: str, message: str, **kw: Any
    ) -> Child:
        """A child that could not be made from the model's output, with the reason bounded."""
        return self._child(
            pids, prompt, raw, text=None, error_kind=kind, error_message=message[:300], **kw
        )


def _describe(err: Exception) -> str:
    return f"{type(err).__name__}: {err}"


class DiffOperator(LMOperator):
    """ELM's diff mutation: the model writes a unified diff of the parent.

    The prompt rendering is the model's own (`LanguageModel.diff_format`: the paper's for
    published diff models, `numbered` for elm-tiny v2) unless `diff_format` names one."""

    name = "diff"

    def __init__(
        self,
        model: Any = None,
        *,
        file_name: str = DEFAULT_FILE,
        messages: tuple[tuple[str, float], ...] = MESSAGES,
        diff_format: str | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(model, **kw)
        self.file_name = file_name
        self.messages = messages
        self._format = get_format(diff_format) if diff_format is not None else None

    @property
    def format(self) -> DiffFormat:
        """The rendering in use (asking for the model's own loads the model)."""
        if self._format is None:
            self._format = get_format(
                getattr(getattr(self.sampler, "model", None), "diff_format", None)
            )
        return self._format

    def prompts(self, parents: Sequence[str], seed: int, offset: int = 0) -> list[tuple[str, str]]:
        """(prompt, message) per parent; the message is drawn per parent from `messages`."""
        out = []
        for i, parent in enumerate(parents):
            message = sample_message(_rng(seed, offset + i, -1), self.messages)
            out.append((self.format.prompt(parent, message, self.file_name), message))
        return out

    def mutate(self, parents, n, seed, parent_ids=None, offset=0, part=None):
        ids = _ids(parents, parent_ids)
        lo, hi = _part(parents, part, offset)
        prompts = self.prompts(parents, seed, offset)
        raw = self._sample_part([p for p, _ in prompts], lo, hi, offset, n, seed, STOP)
        out = []
        for pid, parent, (prompt, message), samples in zip(
            ids[lo:hi], parents[lo:hi], prompts[lo:hi], raw
        ):
            for completion in samples:
                applied = self.format.apply(parent, completion)
                if applied.ok:
                    out.append(
                        self._child((pid,), prompt, completion, text=applied.text, detail=message)
                    )
                else:
                    reason = f"{applied.reason}: {applied.message}"
                    out.append(
                        self._failed((pid,), prompt, completion, "apply", reason, detail=message)
                    )
        return out


#: Where a completed function ends: the next top-level statement.
FUNCTION_STOP = ("\ndef ", "\nclass ", "\nif __name__", "\n@", "\n# ", "\n\n\n")


def replace_function(program: str, name: str, new_def: str) -> str:
    """`program` with its top-level function `name` replaced by `new_def` (appended if absent).
    Raises SyntaxError when the program does not parse."""
    tree = ast.parse(program)
    lines = program.splitlines(keepends=True)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            start = (node.decorator_list[0].lineno if node.decorator_list else node.lineno) - 1
            body = new_def.rstrip("\n") + "\n"
            return "".join(lines[:start]) + body + "".join(lines[node.end_lineno :])
    return program.rstrip("\n") + "\n\n\n" + new_def.rstrip("\n") + "\n"


class PromptOperator(LMOperator):
    """A plain code model writes a new version of the entry function after the parent."""

    name = "prompt"
    default_max_new_tokens = 384

    def __init__(
        self,
        model: Any = None,
        *,
        instruction: str = "A new version of {entry}, changed from {entry}_old above.",
        **kw: Any,
    ) -> None:
        super().__init__(model, **kw)
        self.instruction = instruction

    def prompt(self, parent: str) -> str:
        return self._prompt_and_header(parent)[0]

    def _prompt_and_header(self, parent: str) -> tuple[str, str]:
        """(prompt, the header the completion continues).

        The prompt ends with the parent's own header, `def make_walker():` as written there, so
        the model writes a body for the signature the caller will use. Ending at `def
        make_walker(` instead let SmolLM2 invent parameters (`make_walker(wc):`) in most samples,
        which the sandbox's call without arguments then rejects: 98% of children invalid in the
        first stage-1 prompt run. The header ends at its colon, a token boundary, so the model
        writes the newline and indentation as it would have in running code.
        """
        header = function_header(parent, self.entry) or f"def {self.entry}("
        old = parent.replace(f"def {self.entry}(", f"def {self.entry}_old(", 1).rstrip()
        comment = self.instruction.format(entry=self.entry)
        return f"{old}\n\n\n# {comment}\n{header}", header

    def mutate(self, parents, n, seed, parent_ids=None, offset=0, part=None):
        ids = _ids(parents, parent_ids)
        lo, hi = _part(parents, part, offset)
        prompts, headers = zip(*(self._prompt_and_header(p) for p in parents))
        raw = self._sample_part(list(prompts), lo, hi, offset, n, seed, FUNCTION_STOP)
        out = []
        for pid, parent, prompt, header, samples in zip(
            ids[lo:hi], parents[lo:hi], prompts[lo:hi], headers[lo:hi], raw
        ):
            for completion in samples:
                new_def = header + completion
                try:
                    text = replace_function(parent, self.entry, new_def)
                    ast.parse(text)
                except (SyntaxError, ValueError) as err:
                    out.append(self._failed((pid,), prompt, completion, "parse", _describe(err)))
                    continue
                out.append(self._child((pid,), prompt, completion, text=text))
        return out


def function_header(program: str, name: str) -> str | None:
    """The header of top-level function `name` as written, from `def` to the colon before its
    body (`def make_walker():`), or None when the program does not parse, has no such
    function, or the header's line does not end at that colon (a body on the same line, a
    comment after the colon)."""
    try:
        tree = ast.parse(program)
    except (SyntaxError, ValueError):
        return None
    lines = program.splitlines()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            if node.body[0].lineno == node.lineno:
                return None
            text = "\n".join(lines[node.lineno - 1 : node.body[0].lineno - 1]).rstrip()
            text = text[node.col_offset :]
            return text if text.startswith("def ") and text.endswith(":") else None
    return None


class CrossoverOperator(LMOperator):
    """LMX-style crossover: two parents as numbered examples; the model writes the next one.
    Parent i is paired with a partner drawn (per seed and i) from the other parents of the
    whole batch (`parents`, of which `part` is this call's slice)."""

    name = "crossover"
    default_max_new_tokens = 512

    def prompt(self, a: str, b: str) -> str:
        return f"# Program 1\n{a.rstrip()}\n\n\n# Program 2\n{b.rstrip()}\n\n\n# Program 3\n"

    def mutate(self, parents, n, seed, parent_ids=None, offset=0, part=None):
        # Partners come from the parents at hand: the whole batch when the caller passes it
        # with `part`, else (a slice with `offset`) the slice.
        ids = _ids(parents, parent_ids)
        lo, hi = _part(parents, part, offset)
        pairs = []
        for i in range(len(parents)):
            others = [k for k in range(len(parents)) if k != i] or [i]
            pairs.append((i, _rng(seed, offset + i, -2).choice(others)))
        prompts = [self.prompt(parents[i], parents[k]) for i, k in pairs]
        stop = ("\n# Program 4", "\n# Program")
        raw = self._sample_part(prompts, lo, hi, offset, n, seed, stop)
        out = []
        for (i, k), prompt, samples in zip(pairs[lo:hi], prompts[lo:hi], raw):
            pids = (ids[i], ids[k])
            for completion in samples:
                text = completion.strip("\n") + "\n"
                try:
                    tree = ast.parse(text)
                except (SyntaxError, ValueError) as err:
                    out.append(self._failed(pids, prompt, completion, "parse", _describe(err)))
                    continue
                if not any(
                    isinstance(s, ast.FunctionDef) and s.name == self.entry for s in tree.body
                ):
                    missing = f"the program defines no {self.entry}()"
                    out.append(self._failed(pids, prompt, completion, "parse", missing))
                    continue
                out.append(self._child(pids, prompt, completion, text=text))
        return out


def make_operator(name: str, model: Any = None, env: Any = None, **kw: Any) -> Operator:
    """An operator by name (`OPERATORS`). `model`: a built-in model name, a path, or a loaded
    `LanguageModel` (LM operators; default per `DEFAULT_MODELS`). `env`: a domain whose `entry`
    and, when it has them, `diff_file`, `diff_messages` and `prompt_instruction` adapt the
    prompts (the parity domain uses this). Other keywords go to the operator's constructor."""
    if name == "gp":
        if model is not None:
            raise ValueError("the gp operator uses no model")
        return GPOperator(**kw)
    cls = {"diff": DiffOperator, "prompt": PromptOperator, "crossover": CrossoverOperator}.get(name)
    if cls is None:
        raise ValueError(f"unknown operator {name!r}; known: {', '.join(OPERATORS)}")
    if env is not None:
        kw.setdefault("entry", env.entry)
        if cls is DiffOperator:
            if hasattr(env, "diff_file"):
                kw.setdefault("file_name", env.diff_file)
            if hasattr(env, "diff_messages"):
                kw.setdefault("messages", env.diff_messages)
        if cls is PromptOperator and hasattr(env, "prompt_instruction"):
            kw.setdefault("instruction", env.prompt_instruction)
    return cls(model, **kw)
