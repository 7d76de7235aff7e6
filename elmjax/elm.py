"""The ELM loop's Python API: `ELM(config, out).run()` and `ELM.resume(run_dir).run()`.

The loop itself lives in the `elmjax.loop` package (one module per job: generation step,
pipeline schedule, resume, progress, the `evolve` command); this module is the stable import
path for users and scripts, `from elmjax.elm import ELM`.
"""

from elmjax.config import RunConfig
from elmjax.loop import ELM, RESUMABLE_KEYS, Candidate, RunResult, SeedError
from elmjax.loop.cli import evolve_command
from elmjax.loop.guards import DiskFull

__all__ = [
    "ELM",
    "RESUMABLE_KEYS",
    "Candidate",
    "DiskFull",
    "RunConfig",
    "RunResult",
    "SeedError",
    "evolve_command",
]
