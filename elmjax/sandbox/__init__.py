"""Run untrusted program text and get back plain data or a typed error.

The contract is in docs/architecture.md, "Contracts" (sandbox results).

    from elmjax.sandbox import run_programs
    from elmjax.sodarace.walker import check_walker

    results = run_programs(
        [program_text, ...], entry="make_walker", check=check_walker,
        inject={"walker_creator": "elmjax.sodarace.walker:walker_creator"},
    )
    results[0].ok, results[0].value, results[0].error  # (True, {...}, None)

Defence in depth: an AST policy and restricted builtins (`policy.py`); OS layers in every
worker, from namespaces to seccomp (`isolation.py`; `SandboxPool(...).isolation` reports them);
programs in processes forked from a locked-down template (`worker.py`); and a caller that
bounds, times and validates every reply against the environment's schema (`pool.py`,
`channel.py`, `schemas.py`).

Imports no JAX: workers start fast and live under a small memory limit, and `elmjax exec` stays
light.
"""

from elmjax.sandbox.pool import SandboxPool, run_programs
from elmjax.sandbox.results import ERROR_KINDS, ExecError, ExecResult, Limits

__all__ = ["ERROR_KINDS", "ExecError", "ExecResult", "Limits", "SandboxPool", "run_programs"]
