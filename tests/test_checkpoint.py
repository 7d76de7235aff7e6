"""Checkpoints: bit-identical restore, keep-last-N, and no damage from an interrupted write."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import chex
import jax
import numpy as np

from elmjax import qd
from elmjax.qd.checkpoint import Checkpointer

SPEC = qd.GridSpec(shape=(3, 3), low=(0.0, 0.0), high=(1.0, 1.0))


def archive_at(generation: int) -> qd.Archive:
    rng = np.random.default_rng(generation)
    n = 16
    archive = qd.init(SPEC, token_length=4)
    archive, _ = qd.insert(
        archive,
        rng.normal(size=n).astype(np.float32) * 1e-3 + generation,
        rng.random((n, 2)).astype(np.float32),
        rng.random(n) < 0.8,
        np.arange(n, dtype=np.int32) + 100 * generation,
        rng.integers(0, 1000, (n, 4)).astype(np.int32),
        rng.integers(-1, 9, n).astype(np.int32),
    )
    return archive


def _bits(x) -> np.ndarray:
    x = np.asarray(x)
    return x.view(np.dtype(f"u{x.dtype.itemsize}"))


def assert_bit_identical(a, b) -> None:
    """Same structure, shapes and dtypes, and the same bits (NaN payloads and -0.0 included)."""
    chex.assert_trees_all_equal_shapes_and_dtypes(a, b)
    chex.assert_trees_all_equal(jax.tree.map(_bits, a), jax.tree.map(_bits, b))


def test_restore_is_bit_identical_and_keeps_last_n(tmp_path):
    template = qd.init(SPEC, token_length=4)
    with Checkpointer(tmp_path / "ck", max_to_keep=2) as ck:
        assert ck.latest_generation() is None
        for g in range(4):
            key = jax.random.fold_in(jax.random.key(7), g)
            tree = {"lora": np.full((3, 2), g, np.float32)} if g == 3 else None
            ck.save(
                g, archive_at(g), key, meta={"model": "elm-tiny", "sha256": "ab" * 32}, tree=tree
            )
        assert ck.generations() == [2, 3]
        restored = ck.restore(template)
        assert restored.generation == 3 and restored.meta["model"] == "elm-tiny"
        assert_bit_identical(restored.archive, archive_at(3))
        assert restored.archive.spec == SPEC
        want_key = jax.random.fold_in(jax.random.key(7), 3)
        chex.assert_trees_all_equal(
            jax.random.key_data(restored.key), jax.random.key_data(want_key)
        )
        chex.assert_trees_all_equal(restored.tree["lora"], np.full((3, 2), 3, np.float32))
        older = ck.restore(template, generation=2)
        assert_bit_identical(older.archive, archive_at(2)) and older.tree is None
    # Raw (legacy uint32) keys round-trip as raw keys.
    with Checkpointer(tmp_path / "raw") as ck:
        ck.save(0, archive_at(0), jax.random.PRNGKey(3))
        key = ck.restore(template).key
        assert key.dtype == np.uint32 and key.tolist() == jax.random.PRNGKey(3).tolist()


def test_leftover_partial_write_is_ignored(tmp_path):
    template = qd.init(SPEC, token_length=4)
    with Checkpointer(tmp_path) as ck:
        ck.save(1, archive_at(1), jax.random.key(1))
    # What a writer killed mid-save leaves: a temporary step directory with truncated files.
    partial = tmp_path / "2.orbax-checkpoint-tmp-1700000000"
    shutil.copytree(tmp_path / "1", partial)
    for root, _, files in os.walk(partial):
        for name in files:
            with open(os.path.join(root, name), "r+b") as fh:
                fh.truncate(max(0, os.path.getsize(fh.name) // 3))
    with Checkpointer(tmp_path) as ck:
        assert ck.latest_generation() == 1
        assert_bit_identical(ck.restore(template).archive, archive_at(1))
        ck.save(2, archive_at(2), jax.random.key(2))
        assert_bit_identical(ck.restore(template).archive, archive_at(2))


def test_writer_killed_during_saves_leaves_a_good_checkpoint(tmp_path):
    """SIGKILL a process that is saving checkpoints back to back; the latest one restores."""
    script = textwrap.dedent(
        f"""
        import sys, jax, numpy as np
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_checkpoint import archive_at
        from elmjax.qd.checkpoint import Checkpointer
        ck = Checkpointer({str(tmp_path)!r}, max_to_keep=2)
        big = {{"params": np.ones((1 << 20,), np.float32)}}  # 4 MiB: saves take a while
        for g in range(1000):
            ck.save(g, archive_at(g), jax.random.key(g), tree={{"params": big["params"] * g}})
            print(g, flush=True)
        """
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "0"  # one checkpoint is finalised
        time.sleep(0.4)  # now somewhere inside a later save
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    with Checkpointer(tmp_path, max_to_keep=2) as ck:
        restored = ck.restore(
            qd.init(SPEC, token_length=4), tree_template={"params": np.ones(1 << 20, np.float32)}
        )
        g = restored.generation
        assert_bit_identical(restored.archive, archive_at(g))
        chex.assert_trees_all_equal(restored.tree["params"], np.full(1 << 20, g, np.float32))
