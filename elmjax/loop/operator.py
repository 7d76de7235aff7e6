"""The mutation operator a run's config names, timed: `decode` (the LM) apart from `apply`.

The split is what the metrics and the end-to-end benchmark report per generation; the operator
itself (`elmjax.mutation.operators`) knows nothing about timing.
"""

from __future__ import annotations

import time
from typing import Any

from elmjax.config import RunConfig


def make_mutation_operator(config: RunConfig, env: Any = None) -> TimedOperator:
    from elmjax.mutation.operators import make_operator

    m = config.mutation
    if m.operator == "gp":
        return TimedOperator(make_operator("gp"))
    return TimedOperator(
        make_operator(
            m.operator,
            model=m.model,
            env=env,
            temperature=m.temperature,
            top_p=m.top_p,
            top_k=m.top_k,
            max_new_tokens=m.max_new_tokens,
            dtype=m.dtype,
            model_parallel=m.model_parallel,
        )
    )


class TimedOperator:
    """An operator whose `mutate` also records its time split: `decode` (the LM sampler) and
    `apply` (prompt building, diff application, parsing: everything else)."""

    def __init__(self, operator: Any):
        self.operator = operator
        self.name = operator.name
        self.model_name = getattr(operator, "model_name", None)
        self.last_timings: dict[str, float] = {}
        self._decode = 0.0
        sample = getattr(operator, "_sample", None)
        if sample is not None:

            def timed_sample(*args: Any, **kw: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return sample(*args, **kw)
                finally:
                    self._decode += time.perf_counter() - t0

            operator._sample = timed_sample

    def load(self) -> None:
        """Load the LM now (LM operators load it lazily on first use)."""
        if hasattr(self.operator, "sampler"):
            _ = self.operator.sampler

    def mutate(
        self,
        parents: list[str],
        n: int,
        seed: int,
        parent_ids: list[int],
        part: tuple[int, int] | None = None,
    ) -> list[Any]:
        """Children of parents[lo:hi] for `part=(lo, hi)` (the whole batch when None)."""
        self._decode = 0.0
        t0 = time.perf_counter()
        whole = part is None or tuple(part) == (0, len(parents))
        kw = {} if whole else {"part": part}  # operators outside elmjax may lack it
        children = self.operator.mutate(parents, n, seed, parent_ids=parent_ids, **kw)
        total = time.perf_counter() - t0
        if self.name == "gp":
            self.last_timings = {"apply": total}
        else:
            self.last_timings = {"decode": self._decode, "apply": total - self._decode}
        return children


def mutation_timings(operator: Any, seconds: float) -> dict[str, float]:
    """The operator's own split (decode / apply) when it reports one, else one `mutate` figure."""
    split = getattr(operator, "last_timings", None)
    if isinstance(split, dict) and split:
        return {k: float(v) for k, v in split.items()}
    return {"mutate": seconds}
