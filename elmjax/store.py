"""The program store: every candidate ever evaluated, the run's journal (SQLite, WAL mode).

One row per candidate: its text, parents, how it was made (operator, model, temperature,
prompt, raw model output), its outcome (`ok` or an error kind and message), fitness,
descriptor, cell, whether it entered the archive, and the generation and position in that
generation's insert batch. A generation's rows and its generation-complete marker (a row in
`generations`) are written in ONE transaction, so after a crash a generation is either wholly in
the store or not at all. On open, rows of any generation without a marker (a store written by a
tool that split the transaction, or edited by hand) are deleted: that generation is recomputed
by the resumed run, so nothing is lost and nothing is duplicated.

Exact resume (docs/architecture.md, "Store journal"): load the last checkpoint (archive after
generation k), then `replay(archive, from_generation=k + 1)` re-inserts every later committed
generation in order.
`insert` is deterministic and its result does not depend on batch padding, so replay rebuilds the
live archive bit for bit, provided the loop inserted each generation as one batch in the order of
`batch_index`, with the `parent_cell` values it recorded here.

Stage-2 datasets (programs to fine-tune the LM on) are queries over this table.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

#: 2: the physical diagnostics of every Sodarace evaluation got their own columns
#: (`airborne_fraction`, `peak_speed`, `bone_error`, `muscle_work`); a version-1 store is
#: upgraded in place when opened (the new columns are NULL for its rows).
SCHEMA_VERSION = 2

#: Columns added by each schema version after 1, with their SQL type (in-place upgrade).
_ADDED_COLUMNS = {
    2: (
        ("airborne_fraction", "REAL"),
        ("peak_speed", "REAL"),
        ("bone_error", "REAL"),
        ("muscle_work", "REAL"),
    ),
}

#: The simulator's diagnostics, stored as columns (NULL where the domain reports none).
DIAGNOSTIC_COLUMNS = tuple(name for name, _ in _ADDED_COLUMNS[2])

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS programs (
    program_id      INTEGER PRIMARY KEY,
    generation      INTEGER NOT NULL,
    batch_index     INTEGER NOT NULL,
    text            TEXT NOT NULL,
    parents         TEXT NOT NULL,      -- JSON list of program ids
    parent_cell     INTEGER NOT NULL,   -- cell credited for curiosity (-1: none)
    operator        TEXT,
    model           TEXT,
    temperature     REAL,
    prompt          TEXT,
    raw_output      TEXT,
    outcome_kind    TEXT NOT NULL,      -- 'ok' or a sandbox/evaluation error kind
    outcome_message TEXT,
    valid           INTEGER NOT NULL,
    fitness         REAL,               -- NULL when not finite / not evaluated
    descriptor      TEXT,               -- JSON list of floats (exact float32 values)
    cell            INTEGER NOT NULL,   -- -1: no cell
    entered         INTEGER NOT NULL,   -- 1 if it entered the archive in its generation
    status          INTEGER NOT NULL,   -- elmjax.qd REJECTED / NEW_CELL / IMPROVED
    dx              REAL,
    seconds         REAL,               -- wall time to run and check the program
    tokens          BLOB,               -- int32 token ids (optional)
    extras          TEXT,               -- JSON object of anything else
    airborne_fraction REAL,             -- share of frames with no joint touching a surface
    peak_speed      REAL,               -- largest centre-of-mass speed (units/s)
    bone_error      REAL,               -- largest relative bone-length error at the end
    muscle_work     REAL                -- positive muscle work per unit mass (units^2/s^2)
);
CREATE INDEX IF NOT EXISTS programs_generation ON programs (generation, batch_index);
CREATE INDEX IF NOT EXISTS programs_cell ON programs (cell);
CREATE TABLE IF NOT EXISTS generations (
    generation   INTEGER PRIMARY KEY,
    num_programs INTEGER NOT NULL,
    committed_at REAL NOT NULL,
    info         TEXT                   -- JSON (metrics of the generation, ...)
);
"""


@dataclass
class ProgramRecord:
    """One evaluated candidate. `batch_index` defaults to its position in `write_generation`."""

    program_id: int
    text: str
    parents: list[int] = field(default_factory=list)
    parent_cell: int = -1
    operator: str | None = None
    model: str | None = None
    temperature: float | None = None
    prompt: str | None = None
    raw_output: str | None = None
    outcome_kind: str = "ok"
    outcome_message: str | None = None
    valid: bool = False
    fitness: float | None = None
    descriptor: list[float] | None = None
    cell: int = -1
    entered: bool = False
    status: int = 0
    dx: float | None = None
    seconds: float | None = None
    tokens: list[int] | None = None
    extras: dict[str, Any] | None = None
    airborne_fraction: float | None = None
    peak_speed: float | None = None
    bone_error: float | None = None
    muscle_work: float | None = None
    generation: int = -1
    batch_index: int = -1


_COLUMNS = [f.name for f in fields(ProgramRecord)]


def _finite_or_none(v: float | None) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays in `extras` / `info` become plain JSON numbers and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _to_row(rec: ProgramRecord) -> tuple:
    d = asdict(rec)
    # numpy scalars (np.int32 ids, np.float32 fitness, ...) are not SQLite types: coerce.
    for name in ("program_id", "generation", "batch_index", "parent_cell", "cell", "status"):
        d[name] = int(d[name])
    for name in ("temperature", "seconds"):
        d[name] = None if d[name] is None else float(d[name])
    d["parents"] = json.dumps([int(p) for p in rec.parents])
    d["valid"] = int(bool(rec.valid))
    d["entered"] = int(bool(rec.entered))
    d["fitness"] = _finite_or_none(rec.fitness)
    d["dx"] = _finite_or_none(rec.dx)
    for name in DIAGNOSTIC_COLUMNS:
        d[name] = _finite_or_none(d[name])
    # float32 -> float64 -> repr is exact, so replay sees the very same descriptor.
    d["descriptor"] = (
        None if rec.descriptor is None else json.dumps([float(v) for v in rec.descriptor])
    )
    d["tokens"] = None if rec.tokens is None else np.asarray(rec.tokens, "<i4").tobytes()
    d["extras"] = None if rec.extras is None else json.dumps(rec.extras, default=_json_default)
    return tuple(d[c] for c in _COLUMNS)


def _from_row(row: sqlite3.Row) -> ProgramRecord:
    d = dict(row)
    d["parents"] = json.loads(d["parents"])
    d["valid"] = bool(d["valid"])
    d["entered"] = bool(d["entered"])
    d["descriptor"] = None if d["descriptor"] is None else json.loads(d["descriptor"])
    d["tokens"] = None if d["tokens"] is None else np.frombuffer(d["tokens"], "<i4").tolist()
    d["extras"] = None if d["extras"] is None else json.loads(d["extras"])
    return ProgramRecord(**d)


class StoreError(RuntimeError):
    """A store that cannot be used as asked (wrong schema, generation written twice, ...)."""


class ProgramStore:
    """SQLite journal of a run. Thread-safe; one writer (the loop), readers anywhere.

    `recovered` lists the generations whose torn rows were removed when the store was opened.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed generation survives power loss too, not only a killed process.
        self._db.execute("PRAGMA synchronous=FULL")
        try:
            self._create_schema()
            self.recovered = self._recover()
        except BaseException:
            self._db.close()
            raise

    # ---- setup ---------------------------------------------------------------------------

    def _create_schema(self) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        self._db.execute(stmt)
                rows = self._db.execute("SELECT version FROM schema_version").fetchall()
                if rows and 1 <= rows[0][0] < SCHEMA_VERSION:
                    self._upgrade(rows[0][0])
                    rows = [(SCHEMA_VERSION,)]
                if not rows:
                    self._db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
                elif rows[0][0] != SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.path}: store schema version {rows[0][0]}, this elmjax reads "
                        f"version {SCHEMA_VERSION}"
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _upgrade(self, version: int) -> None:
        """Add the columns of every later schema version (inside `_create_schema`'s
        transaction, so a failed upgrade leaves the store as it was)."""
        have = {r[1] for r in self._db.execute("PRAGMA table_info(programs)").fetchall()}
        for v in range(version + 1, SCHEMA_VERSION + 1):
            for name, kind in _ADDED_COLUMNS.get(v, ()):
                if name not in have:
                    self._db.execute(f"ALTER TABLE programs ADD COLUMN {name} {kind}")
        self._db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    def _recover(self) -> list[int]:
        """Delete rows of generations that have no completion marker; return those generations."""
        with self._transaction():
            torn = [
                r[0]
                for r in self._db.execute(
                    "SELECT DISTINCT generation FROM programs WHERE generation NOT IN "
                    "(SELECT generation FROM generations) ORDER BY generation"
                )
            ]
            if torn:
                self._db.execute(
                    "DELETE FROM programs WHERE generation NOT IN (SELECT generation FROM generations)"
                )
        return torn

    class _Tx:
        def __init__(self, store: ProgramStore) -> None:
            self.store = store

        def __enter__(self) -> sqlite3.Connection:
            self.store._lock.acquire()
            self.store._db.execute("BEGIN IMMEDIATE")
            return self.store._db

        def __exit__(self, exc_type, exc, tb) -> None:
            try:
                self.store._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
            finally:
                self.store._lock.release()

    def _transaction(self) -> ProgramStore._Tx:
        return ProgramStore._Tx(self)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> ProgramStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- writing -------------------------------------------------------------------------

    def write_generation(
        self,
        generation: int,
        rows: Sequence[ProgramRecord | dict[str, Any]],
        info: dict[str, Any] | None = None,
    ) -> None:
        """Write a whole generation and its completion marker in one transaction.

        Rows keep their order as `batch_index` unless they set it. Raises `StoreError` if the
        generation is already committed or a program id is already in the store.
        """
        recs = []
        for i, r in enumerate(rows):
            rec = r if isinstance(r, ProgramRecord) else ProgramRecord(**r)
            rec = ProgramRecord(**{**asdict(rec), "generation": int(generation)})
            if rec.batch_index < 0:
                rec.batch_index = i
            recs.append(rec)
        placeholders = ",".join("?" * len(_COLUMNS))
        try:
            with self._transaction() as db:
                if db.execute(
                    "SELECT 1 FROM generations WHERE generation = ?", (generation,)
                ).fetchone():
                    raise StoreError(f"generation {generation} is already committed")
                db.executemany(
                    f"INSERT INTO programs ({','.join(_COLUMNS)}) VALUES ({placeholders})",
                    [_to_row(r) for r in recs],
                )
                db.execute(
                    "INSERT INTO generations VALUES (?, ?, ?, ?)",
                    (
                        int(generation),
                        len(recs),
                        time.time(),
                        json.dumps(info or {}, default=_json_default),
                    ),
                )
        except sqlite3.IntegrityError as e:
            raise StoreError(f"generation {generation}: {e}") from e

    # ---- reading -------------------------------------------------------------------------

    def _query(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    def committed_generations(self) -> list[int]:
        """Generations with a completion marker, ascending."""
        return [r[0] for r in self._query("SELECT generation FROM generations ORDER BY generation")]

    def last_generation(self) -> int:
        """The last committed generation, -1 if none."""
        gens = self.committed_generations()
        return gens[-1] if gens else -1

    def next_program_id(self) -> int:
        """One past the largest committed program id (0 for an empty store)."""
        row = self._query("SELECT MAX(program_id) FROM programs")[0][0]
        return 0 if row is None else int(row) + 1

    def __len__(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM programs")[0][0])

    def get(self, program_id: int) -> ProgramRecord | None:
        rows = self._query("SELECT * FROM programs WHERE program_id = ?", (int(program_id),))
        return _from_row(rows[0]) if rows else None

    def texts(self, program_ids: Iterable[int]) -> dict[int, str]:
        """program id -> text, for building prompts from parent ids."""
        ids = [int(i) for i in program_ids]
        out: dict[int, str] = {}
        for k in range(0, len(ids), 500):
            chunk = ids[k : k + 500]
            q = f"SELECT program_id, text FROM programs WHERE program_id IN ({','.join('?' * len(chunk))})"
            out.update({r[0]: r[1] for r in self._query(q, chunk)})
        return out

    def generation(self, generation: int) -> list[ProgramRecord]:
        """A generation's rows in insert-batch order."""
        rows = self._query(
            "SELECT * FROM programs WHERE generation = ? ORDER BY batch_index", (int(generation),)
        )
        return [_from_row(r) for r in rows]

    def lineage(self, program_id: int) -> list[ProgramRecord]:
        """The program and all its ancestors (every parent, recursively), newest first."""
        rows = self._query(
            """
            WITH RECURSIVE anc(pid) AS (
                SELECT ?
                UNION
                SELECT CAST(j.value AS INTEGER) FROM anc
                JOIN programs p ON p.program_id = anc.pid, json_each(p.parents) j
            )
            SELECT p.* FROM programs p JOIN anc ON p.program_id = anc.pid
            ORDER BY p.generation DESC, p.batch_index DESC
            """,
            (int(program_id),),
        )
        return [_from_row(r) for r in rows]

    def cell_history(self, cell: int) -> list[ProgramRecord]:
        """Every candidate that mapped to `cell`, in the order they were inserted."""
        rows = self._query(
            "SELECT * FROM programs WHERE cell = ? ORDER BY generation, batch_index", (int(cell),)
        )
        return [_from_row(r) for r in rows]

    def stage2_dataset(
        self, within: float = 0.1, distinct_text: bool = True
    ) -> list[ProgramRecord]:
        """Valid programs whose fitness is within `within` (a fraction: 0.1 = 10%) of the best
        fitness ever seen in their cell: fitness >= best - within * |best|. Ordered by cell,
        then fitness descending; with `distinct_text`, each text appears once (its best row).
        """
        rows = self._query(
            """
            WITH best AS (
                SELECT cell, MAX(fitness) AS f FROM programs
                WHERE valid = 1 AND fitness IS NOT NULL AND cell >= 0 GROUP BY cell
            )
            SELECT p.* FROM programs p JOIN best b ON p.cell = b.cell
            WHERE p.valid = 1 AND p.fitness IS NOT NULL
              AND p.fitness >= b.f - ? * ABS(b.f)
            ORDER BY p.cell, p.fitness DESC, p.program_id
            """,
            (float(within),),
        )
        recs = [_from_row(r) for r in rows]
        if not distinct_text:
            return recs
        seen: set[str] = set()
        out = []
        for r in recs:
            if r.text not in seen:
                seen.add(r.text)
                out.append(r)
        return out

    def entered_edits(
        self, up_to_generation: int | None = None, from_generation: int = 0
    ) -> list[tuple[int, str, str]]:
        """(program id, parent text, child text) of every single-parent candidate that entered
        the archive in committed generations `from_generation`..`up_to_generation`, in program
        id order: the accepted diffs that the paper fine-tunes its diff model on."""
        last = self.last_generation() if up_to_generation is None else int(up_to_generation)
        rows = self._query(
            """
            SELECT c.program_id, p.text AS parent, c.text AS child FROM programs c
            JOIN programs p ON p.program_id = CAST(json_extract(c.parents, '$[0]') AS INTEGER)
            WHERE c.entered = 1 AND json_array_length(c.parents) = 1
              AND c.generation BETWEEN ? AND ? AND c.text != p.text
            ORDER BY c.program_id
            """,
            (int(from_generation), last),
        )
        return [(int(r["program_id"]), r["parent"], r["child"]) for r in rows]

    def iter_generations(
        self, from_generation: int = 0
    ) -> Iterator[tuple[int, list[ProgramRecord]]]:
        for g in self.committed_generations():
            if g >= from_generation:
                yield g, self.generation(g)

    # ---- exact resume --------------------------------------------------------------------

    def replay(self, archive, from_generation: int = 0, to_generation: int | None = None):
        """Re-insert committed generations `from_generation`..`to_generation` into `archive`.

        Each generation is one `insert` in batch order, padded to a power of two >= 64 (padding rows
        have program id -1 and are ignored), so few shapes are compiled. Returns the archive.
        """
        from elmjax.qd import insert  # JAX only when replaying

        dim = int(archive.descriptor.shape[1])
        token_len = None if archive.tokens is None else int(archive.tokens.shape[1])
        for g, recs in self.iter_generations(from_generation):
            if to_generation is not None and g > to_generation:
                break
            # An empty generation is still one insert (of padding only), as it was live: it
            # resets `last_n_evaluated`, so skipping it would replay a different archive.
            archive, _ = insert(archive, *_batch_arrays(recs, dim, token_len))
        return archive


def _batch_arrays(recs: Sequence[ProgramRecord], dim: int, token_len: int | None):
    n = len(recs)
    size = max(64, 1 << max(0, (n - 1).bit_length()))
    fit = np.full(size, np.nan, np.float32)
    desc = np.zeros((size, dim), np.float32)
    valid = np.zeros(size, bool)
    pid = np.full(size, -1, np.int32)
    parent_cell = np.full(size, -1, np.int32)
    tokens = None if token_len is None else np.zeros((size, token_len), np.int32)
    for i, r in enumerate(recs):
        fit[i] = np.nan if r.fitness is None else r.fitness
        if r.descriptor is not None:
            desc[i] = r.descriptor
        else:
            desc[i] = np.nan
        valid[i] = r.valid
        pid[i] = r.program_id
        parent_cell[i] = r.parent_cell
        if tokens is not None and r.tokens is not None:
            t = np.asarray(r.tokens, np.int32)[:token_len]
            tokens[i, : len(t)] = t
    return fit, desc, valid, pid, tokens, parent_cell
