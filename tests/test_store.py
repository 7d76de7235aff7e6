"""Program store: replay rebuilds the live archive, torn generations are recovered, queries."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap

import chex
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from elmjax import qd
from elmjax.store import ProgramRecord, ProgramStore, StoreError

SPEC = qd.GridSpec(shape=(4, 3, 2), low=(0.0, 0.0, 0.0), high=(1.0, 1.0, 1.0))
LIVE_PAD = 32  # the "loop" pads every generation to 32 rows; replay pads differently


def random_generation(rng: np.random.Generator, next_id: int, max_rows: int = 20):
    n = int(rng.integers(0, max_rows + 1))
    recs = []
    for i in range(n):
        valid = bool(rng.random() < 0.8)
        fit = float(np.float32(rng.choice([0.0, 0.25, 1.0, 2.0, rng.random() * 3])))
        if rng.random() < 0.05:
            fit = float("nan")
        desc = (rng.random(3) * 1.2 - 0.1).astype(np.float32).tolist()
        recs.append(
            ProgramRecord(
                program_id=next_id + i,
                text=f"def make_walker(): return {next_id + i}",
                parents=[int(rng.integers(0, max(next_id, 1)))] if next_id else [],
                parent_cell=int(rng.integers(-1, SPEC.num_cells)),
                outcome_kind="ok" if valid else "invalid",
                valid=valid,
                fitness=fit,
                descriptor=desc,
                tokens=rng.integers(0, 100, 4).tolist(),
            )
        )
    return recs


def live_insert(archive, recs):
    fit = np.full(LIVE_PAD, np.nan, np.float32)
    desc = np.zeros((LIVE_PAD, 3), np.float32)
    valid = np.zeros(LIVE_PAD, bool)
    pid = np.full(LIVE_PAD, -1, np.int32)
    pcell = np.full(LIVE_PAD, -1, np.int32)
    tokens = np.zeros((LIVE_PAD, 4), np.int32)
    for i, r in enumerate(recs):
        fit[i], desc[i], valid[i], pid[i] = r.fitness, r.descriptor, r.valid, r.program_id
        pcell[i], tokens[i] = r.parent_cell, r.tokens
    archive, info = qd.insert(archive, fit, desc, valid, pid, tokens, pcell)
    for i, r in enumerate(recs):  # what the loop records from InsertInfo
        r.cell = int(info.cell[i])
        r.status = int(info.status[i])
        r.entered = bool(info.entered[i])
    return archive


def assert_archives_equal(a, b):
    chex.assert_trees_all_equal(a, b)


@settings(max_examples=8)
@given(st.integers(0, 2**32 - 1), st.integers(1, 6), st.integers(0, 6))
@example(seed=45, generations=3, checkpoint_at=0)  # its last generation is empty
def test_replay_equals_live_archive(tmp_path_factory, seed, generations, checkpoint_at):
    rng = np.random.default_rng(seed)
    path = tmp_path_factory.mktemp("store") / "programs.sqlite"
    live = qd.init(SPEC, token_length=4)
    snapshot = live if checkpoint_at == 0 else None
    with ProgramStore(path) as store:
        for g in range(generations):
            recs = random_generation(rng, store.next_program_id())
            live = live_insert(live, recs)
            store.write_generation(g, recs)
            if g + 1 == checkpoint_at:
                snapshot = live
    with ProgramStore(path) as store:
        assert store.committed_generations() == list(range(generations))
        assert_archives_equal(store.replay(qd.init(SPEC, token_length=4)), live)
        if snapshot is not None:  # resume from a checkpoint taken after generation k
            assert_archives_equal(store.replay(snapshot, from_generation=checkpoint_at), live)


def test_torn_generation_is_removed_on_open(tmp_path):
    path = tmp_path / "programs.sqlite"
    rng = np.random.default_rng(0)
    with ProgramStore(path) as store:
        g0 = random_generation(rng, 0, 10) or [ProgramRecord(0, "x")]
        store.write_generation(0, g0)
        g1 = random_generation(rng, store.next_program_id(), 10)
        store.write_generation(1, g1)
        kept = len(store)
        next_id = store.next_program_id()
    # A writer that put rows of generation 2 in the table without the marker.
    db = sqlite3.connect(path)
    for i in range(5):
        db.execute(
            "INSERT INTO programs (program_id, generation, batch_index, text, parents, "
            "parent_cell, outcome_kind, valid, cell, entered, status) "
            "VALUES (?, 2, ?, 'torn', '[]', -1, 'ok', 1, 0, 0, 0)",
            (next_id + i, i),
        )
    db.commit()
    db.close()
    with ProgramStore(path) as store:
        assert store.recovered == [2]
        assert len(store) == kept and store.next_program_id() == next_id
        assert store.committed_generations() == [0, 1]
        # The resumed run recomputes generation 2 with the same ids: no duplicates.
        store.write_generation(2, [ProgramRecord(next_id + i, "redo") for i in range(5)])
        assert len(store) == kept + 5
    with ProgramStore(path) as store:
        assert store.recovered == []


def test_process_killed_mid_transaction_loses_only_that_generation(tmp_path):
    path = tmp_path / "programs.sqlite"
    script = textwrap.dedent(
        f"""
        import os
        import elmjax.store as s
        store = s.ProgramStore({str(path)!r})
        store.write_generation(0, [s.ProgramRecord(i, "ok") for i in range(3)])
        real = s._to_row
        def dying(rec):
            if rec.program_id == 5:
                os._exit(9)  # killed while generation 1's transaction is open
            return real(rec)
        s._to_row = dying
        store.write_generation(1, [s.ProgramRecord(i, "lost") for i in range(3, 8)])
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == 9, proc.stderr.decode()
    with ProgramStore(path) as store:
        assert store.committed_generations() == [0]
        assert len(store) == 3 and store.next_program_id() == 3
        assert all(r.text == "ok" for r in store.generation(0))


def test_write_errors_leave_store_unchanged(tmp_path):
    with ProgramStore(tmp_path / "p.sqlite") as store:
        store.write_generation(0, [ProgramRecord(0, "a")])
        with pytest.raises(StoreError, match="already committed"):
            store.write_generation(0, [ProgramRecord(1, "b")])
        with pytest.raises(StoreError):
            store.write_generation(1, [ProgramRecord(1, "b"), ProgramRecord(0, "dup")])
        assert store.committed_generations() == [0] and len(store) == 1
    db = sqlite3.connect(tmp_path / "p.sqlite")
    db.execute("UPDATE schema_version SET version = 999")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="schema version 999"):
        ProgramStore(tmp_path / "p.sqlite")


def test_queries(tmp_path):
    with ProgramStore(tmp_path / "p.sqlite") as store:
        assert store.next_program_id() == 0
        store.write_generation(
            0,
            [
                ProgramRecord(0, "seed a", valid=True, fitness=10.0, cell=3, descriptor=[0.1]),
                ProgramRecord(1, "seed b", valid=True, fitness=4.0, cell=5, descriptor=[0.5]),
            ],
        )
        store.write_generation(
            1,
            [
                ProgramRecord(
                    2,
                    "child",
                    parents=[0],
                    valid=True,
                    fitness=9.5,
                    cell=3,
                    extras={"dx": np.float32(2)},
                ),
                ProgramRecord(3, "cross", parents=[2, 1], valid=True, fitness=3.0, cell=5),
                ProgramRecord(4, "bad", parents=[0], outcome_kind="syntax", cell=-1),
                ProgramRecord(5, "seed a", parents=[0], valid=True, fitness=10.0, cell=3),
                ProgramRecord(
                    np.int64(6),
                    "low",
                    parents=[np.int32(2)],
                    valid=np.bool_(True),
                    fitness=np.float32("inf"),
                    cell=np.int32(3),
                    status=np.int32(0),
                    temperature=np.float32(0.5),
                    descriptor=np.float32([0.25]),
                    seconds=np.float64(1),
                ),
            ],
            info={"coverage": np.float32(0.1)},
        )
        assert [r.program_id for r in store.lineage(3)] == [3, 2, 1, 0]
        assert [r.program_id for r in store.lineage(0)] == [0]
        assert [r.program_id for r in store.cell_history(3)] == [0, 2, 5, 6]
        rec = store.get(4)
        assert rec.outcome_kind == "syntax" and rec.generation == 1 and rec.batch_index == 2
        assert store.get(6).fitness is None  # non-finite fitness is stored as NULL
        # within 10% of the niche's best: cell 3 best 10 -> >= 9; cell 5 best 4 -> >= 3.6
        assert [r.program_id for r in store.stage2_dataset(0.1)] == [0, 2, 1]
        assert [r.program_id for r in store.stage2_dataset(0.1, distinct_text=False)] == [
            0,
            5,
            2,
            1,
        ]
        assert [r.program_id for r in store.stage2_dataset(0.3)] == [0, 2, 1, 3]
        assert store.texts([0, 3, 99]) == {0: "seed a", 3: "cross"}
        assert store.next_program_id() == 7 and store.last_generation() == 1
        assert store.get(2).extras == {"dx": 2.0}


def test_diagnostic_columns_round_trip_and_a_version_1_store_is_upgraded(tmp_path):
    from elmjax.store import DIAGNOSTIC_COLUMNS, SCHEMA_VERSION

    diag = {"airborne_fraction": 0.25, "peak_speed": 31.5, "bone_error": 0.004, "muscle_work": 9.0}
    with ProgramStore(tmp_path / "p.sqlite") as store:
        store.write_generation(0, [ProgramRecord(0, "a", valid=True, fitness=1.0, **diag)])
        got = store.get(0)
        assert {k: getattr(got, k) for k in DIAGNOSTIC_COLUMNS} == diag
    # a store written before the diagnostics existed: the old table, version 1
    db = sqlite3.connect(tmp_path / "old.sqlite")
    db.executescript(
        "CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (1);"
        "CREATE TABLE programs (program_id INTEGER PRIMARY KEY, generation INTEGER NOT NULL,"
        " batch_index INTEGER NOT NULL, text TEXT NOT NULL, parents TEXT NOT NULL,"
        " parent_cell INTEGER NOT NULL, operator TEXT, model TEXT, temperature REAL, prompt TEXT,"
        " raw_output TEXT, outcome_kind TEXT NOT NULL, outcome_message TEXT,"
        " valid INTEGER NOT NULL, fitness REAL, descriptor TEXT, cell INTEGER NOT NULL,"
        " entered INTEGER NOT NULL, status INTEGER NOT NULL, dx REAL, seconds REAL, tokens BLOB,"
        " extras TEXT);"
        "CREATE TABLE generations (generation INTEGER PRIMARY KEY,"
        " num_programs INTEGER NOT NULL, committed_at REAL NOT NULL, info TEXT);"
        "INSERT INTO programs VALUES (0, 0, 0, 'old', '[]', -1, NULL, NULL, NULL, NULL, NULL,"
        " 'ok', NULL, 1, 2.0, '[1.0]', 3, 1, 1, 2.0, NULL, NULL, NULL);"
        "INSERT INTO generations VALUES (0, 1, 0.0, NULL);"
    )
    db.commit()
    db.close()
    with ProgramStore(tmp_path / "old.sqlite") as store:
        old = store.get(0)
        assert old.text == "old" and old.fitness == 2.0 and old.peak_speed is None
        store.write_generation(1, [ProgramRecord(1, "new", **diag)])
        assert store.get(1).muscle_work == 9.0
    db = sqlite3.connect(tmp_path / "old.sqlite")
    assert db.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    db.close()
