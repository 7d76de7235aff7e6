"""Fault injection for the resume and disk-full tests: fail at a chosen generation and stage.

`ELMJAX_FAULT=GEN:STAGE[:ACTION]` (several separated by commas) makes the ELM loop

- `kill` (default): SIGKILL itself, the way an out-of-memory killer or a pulled plug would,
  with nothing flushed and no handler run;
- `enospc`: raise `OSError(ENOSPC)`, as a full disk does;
- `interrupt`: deliver SIGINT to itself (what Ctrl-C does),

when generation GEN reaches STAGE. Stages, in the order a generation passes them: `prepare`
(parents selected, children being made), `simulate`, `insert`, `store` (before the generation's
transaction), `stored` (after its commit), `metrics`, `checkpoint` (before a checkpoint is written).

Reading an environment variable costs nothing per call once parsed; a run without it never
pays for this module beyond one dictionary lookup.
"""

from __future__ import annotations

import errno
import os
import signal

STAGES = ("prepare", "simulate", "insert", "store", "stored", "metrics", "checkpoint")
ACTIONS = ("kill", "enospc", "interrupt")
_ENV = "ELMJAX_FAULT"


def _parse(spec: str) -> dict[tuple[int, str], str]:
    plan = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        parts = item.split(":")
        if len(parts) not in (2, 3) or parts[1] not in STAGES:
            raise ValueError(f"{_ENV}: bad item {item!r} (GEN:STAGE[:ACTION], stages {STAGES})")
        action = parts[2] if len(parts) == 3 else "kill"
        if action not in ACTIONS:
            raise ValueError(f"{_ENV}: unknown action {action!r} ({ACTIONS})")
        plan[(int(parts[0]), parts[1])] = action
    return plan


_PLAN = _parse(os.environ.get(_ENV, ""))


def reload() -> None:
    """Re-read the environment variable (tests that set it in-process)."""
    global _PLAN
    _PLAN = _parse(os.environ.get(_ENV, ""))


def fault_point(generation: int, stage: str) -> None:
    """Fail here if the plan says so; otherwise return immediately."""
    if not _PLAN:
        return
    action = _PLAN.get((generation, stage))
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, f"No space left on device (injected at {generation}:{stage})")
    elif action == "interrupt":
        os.kill(os.getpid(), signal.SIGINT)
