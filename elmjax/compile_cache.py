"""JAX's persistent compilation cache, on by default: compile the simulator and sampler once.

A restart, a `--resume` and every worker of a pod would otherwise compile the same programs
again (seconds to minutes per shape on a CPU, more for a large model). JAX keys each entry by
the program, the compile options, the backend and its version, so a cache directory shared
between runs, or by the processes of one host, never hands back a wrong executable.

`enable(setting)` takes the run config's `compile_cache`: "auto" (a user cache directory, see
`default_directory`), a directory, or "off". "off" leaves JAX's own settings (its
environment variables) alone. Call it before the first compilation of the
process: JAX reads the setting when it first uses the cache.
"""

from __future__ import annotations

import os
from pathlib import Path

#: compiles faster than this are not worth a disk entry (JAX's default is 1 s; most of
#: elmjax's small programs, e.g. the archive insert, take 0.2-1 s on a CPU).
MIN_COMPILE_SECONDS = 0.2


def default_directory() -> Path:
    """$ELMJAX_CACHE_DIR, else JAX's own $JAX_COMPILATION_CACHE_DIR, else
    $XDG_CACHE_HOME/elmjax/jax, else ~/.cache/elmjax/jax."""
    explicit = os.environ.get("ELMJAX_CACHE_DIR") or os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "elmjax" / "jax"


def resolve(setting: str) -> Path | None:
    """The directory a `compile_cache` setting names, or None for "off"."""
    word = setting.strip().lower()
    if word in ("off", "none", "false", "no"):
        return None
    if word == "auto":
        return default_directory()
    return Path(setting).expanduser()


def enable(setting: str) -> Path | None:
    """Point JAX's persistent compilation cache at the directory `setting` names (None: leave
    it off). A directory that cannot be created turns the cache off with a warning rather than
    stopping the run: the cache only saves time."""
    import jax

    directory = resolve(setting)
    if directory is None:
        return None
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        import sys

        print(
            f"elmjax: compile cache {directory} unusable ({err.strerror or err}); compiling "
            "without it",
            file=sys.stderr,
        )
        return None
    jax.config.update("jax_compilation_cache_dir", str(directory))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory
