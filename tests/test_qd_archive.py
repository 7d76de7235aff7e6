"""The jit archive against a naive pure-Python MAP-Elites reference.

Batches are padded to a fixed size with `program_id = -1` rows (padding), so every example reuses
the same compiled `insert`; values are drawn from small pools so that many candidates share a
cell and fitness ties are common.
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elmjax import qd, tracing

SPEC = qd.GridSpec(shape=(3, 4, 2), low=(0.0, -1.0, 10.0), high=(3.0, 1.0, 20.0))
PAD = 24  # fixed batch size of every insert in this file

FITNESS_POOL = [0.0, 0.5, 1.0, 1.0, 2.0, -1.0, math.nan, math.inf, -math.inf]
DESC_POOLS = [
    [-5.0, 0.0, 0.4, 1.0, 2.999, 3.0, 7.0, math.nan],
    [-1.0, -0.5, 0.0, 0.49, 0.5, 1.0, 9.0, -math.inf],
    [0.0, 10.0, 14.9, 15.0, 19.0, 20.0, 1e30, math.inf],
]


def reference_cell(desc: list[float]) -> int | None:
    """Row-major grid index with edge clipping, float32 arithmetic as documented."""
    if not all(math.isfinite(v) for v in desc):
        return None
    scale = SPEC.scale()
    idx = 0
    for d, v in enumerate(desc):
        t = np.floor((np.float32(v) - np.float32(SPEC.low[d])) * scale[d])
        t = int(min(max(t, 0.0), SPEC.shape[d] - 1))
        idx = idx * SPEC.shape[d] + t
    return idx


class ReferenceArchive:
    """Plain dicts: cell -> (fitness, descriptor, program_id)."""

    def __init__(self) -> None:
        self.elites: dict[int, tuple[float, list[float], int]] = {}

    def insert(self, rows) -> list[tuple[int, int]]:
        """rows: (fitness, desc, valid, pid); returns (status, cell) per row."""
        groups: dict[int, list[int]] = {}
        cells = []
        for i, (f, desc, valid, pid) in enumerate(rows):
            cell = reference_cell(desc) if pid >= 0 else None
            cells.append(-1 if cell is None else cell)
            if pid >= 0 and valid and math.isfinite(f) and cell is not None:
                groups.setdefault(cell, []).append(i)
        status = [qd.REJECTED] * len(rows)
        for cell, members in groups.items():
            best = max(np.float32(rows[i][0]) for i in members)
            winner = min(i for i in members if np.float32(rows[i][0]) == best)
            old = self.elites.get(cell)
            if old is None or best > old[0]:
                status[winner] = qd.NEW_CELL if old is None else qd.IMPROVED
                f, desc, _, pid = rows[winner]
                self.elites[cell] = (
                    float(np.float32(f)),
                    [float(np.float32(v)) for v in desc],
                    pid,
                )
        return list(zip(status, cells))


row = st.tuples(
    st.sampled_from(FITNESS_POOL),
    st.tuples(*(st.sampled_from(p) for p in DESC_POOLS)),
    st.booleans() | st.just(True),
    st.integers(-1, 1000),
)
batches = st.lists(st.lists(row, min_size=0, max_size=PAD), min_size=1, max_size=4)


def as_arrays(rows):
    fit = np.full(PAD, np.nan, np.float32)
    desc = np.zeros((PAD, 3), np.float32)
    valid = np.zeros(PAD, bool)
    pid = np.full(PAD, -1, np.int32)
    for i, (f, d, v, p) in enumerate(rows):
        fit[i], desc[i], valid[i], pid[i] = f, d, v, p
    return fit, desc, valid, pid


def assert_same(archive: qd.Archive, ref: ReferenceArchive) -> None:
    fit = np.asarray(archive.fitness)
    pid = np.asarray(archive.program_id)
    desc = np.asarray(archive.descriptor)
    assert set(np.flatnonzero(pid >= 0).tolist()) == set(ref.elites)
    for cell in range(SPEC.num_cells):
        if cell in ref.elites:
            f, d, p = ref.elites[cell]
            assert (fit[cell], pid[cell]) == (np.float32(f), p), cell
            chex.assert_trees_all_equal(desc[cell], np.float32(d))
        else:
            assert fit[cell] == -np.inf


@settings(max_examples=60)
@given(batches)
def test_insert_matches_reference(batch_list):
    archive = qd.init(SPEC)
    ref = ReferenceArchive()
    for rows in batch_list:
        archive, info = qd.insert(archive, *as_arrays(rows))
        expected = ref.insert(rows)
        got = list(zip(np.asarray(info.status).tolist(), np.asarray(info.cell).tolist()))
        assert got[: len(rows)] == expected
        assert got[len(rows) :] == [(qd.REJECTED, -1)] * (PAD - len(rows))
        assert_same(archive, ref)
        real = [r for r in rows if r[3] >= 0]
        assert int(archive.last_n_evaluated) == len(real)
        assert int(archive.last_n_valid) == sum(bool(r[2]) for r in real)


@settings(max_examples=25)
@given(batches)
def test_repeated_batch_is_idempotent(batch_list):
    archive = qd.init(SPEC)
    for rows in batch_list:
        archive, _ = qd.insert(archive, *as_arrays(rows))
    again, info = qd.insert(archive, *as_arrays(batch_list[-1]))
    elites = lambda a: (a.fitness, a.descriptor, a.program_id)  # noqa: E731
    chex.assert_trees_all_equal(elites(again), elites(archive))
    assert not np.asarray(info.entered).any()


def test_full_archive_only_improves():
    cells = np.arange(SPEC.num_cells)
    idx = np.stack(np.unravel_index(cells, SPEC.shape), -1)
    centre = np.asarray(SPEC.low) + (idx + 0.5) / SPEC.shape * (
        np.asarray(SPEC.high) - np.asarray(SPEC.low)
    )
    n = SPEC.num_cells
    archive, info = qd.insert(
        qd.init(SPEC), np.ones(n, np.float32), centre.astype(np.float32), np.ones(n, bool), cells
    )
    assert (np.asarray(info.status) == qd.NEW_CELL).all()
    assert np.asarray(info.cell).tolist() == cells.tolist()
    assert float(qd.metrics(archive)["coverage"]) == 1.0
    fit = np.where(cells % 2 == 0, 2.0, 0.5).astype(np.float32)
    archive, info = qd.insert(archive, fit, centre.astype(np.float32), np.ones(n, bool), cells + n)
    status = np.asarray(info.status)
    assert (status[cells % 2 == 0] == qd.IMPROVED).all()
    assert (status[cells % 2 == 1] == qd.REJECTED).all()
    assert (
        np.asarray(archive.program_id).tolist()
        == np.where(cells % 2 == 0, cells + n, cells).tolist()
    )


def test_empty_batch():
    archive = qd.init(SPEC)
    new, info = qd.insert(
        archive,
        np.zeros(0, np.float32),
        np.zeros((0, 3), np.float32),
        np.zeros(0, bool),
        np.zeros(0, np.int32),
    )
    assert info.status.shape == (0,)
    assert int(qd.metrics(new)["num_filled"]) == 0
    assert math.isnan(float(qd.metrics(new)["validity"]))


def test_tokens_follow_their_elite():
    archive = qd.init(SPEC, token_length=5)
    desc = np.zeros((3, 3), np.float32) + np.float32([0.5, 0.0, 12.0])
    tokens = np.arange(15, dtype=np.int32).reshape(3, 5)
    archive, info = qd.insert(
        archive, np.float32([1, 3, 2]), desc, np.ones(3, bool), np.int32([7, 8, 9]), tokens
    )
    cell = int(info.cell[1])
    assert int(archive.program_id[cell]) == 8
    chex.assert_trees_all_equal(archive.tokens[cell], tokens[1])


def test_metrics_and_selection():
    archive = qd.init(SPEC)
    d0, d1 = (0.5, -0.9, 11.0), (2.5, 0.9, 19.0)
    archive, info = qd.insert(archive, *as_arrays([(1.0, d0, True, 11), (3.0, d1, True, 22)]))
    cells = np.asarray(info.cell)[:2]
    m = qd.metrics_host(archive)
    assert m["num_filled"] == 2 and m["qd_score"] == 4.0 and m["max_fitness"] == 3.0
    assert m["mean_fitness"] == 2.0 and m["validity"] == 1.0
    parents = np.asarray(qd.sample_parents(archive, jax.random.PRNGKey(0), 256))
    assert set(parents.tolist()) == {11, 22}
    assert 80 < (parents == 11).sum() < 176
    # Curiosity: cell of 11 gets 9 children that enter, cell of 22 gets 9 that cannot.
    rows = [(5.0, (0.1 + 0.3 * i, 0.5, 15.0 + i), True, 100 + i) for i in range(9)]
    rows += [(-math.inf, (0.5, 0.5, 15.0), True, 200 + i) for i in range(9)]
    parent_cell = np.full(PAD, -1, np.int32)
    parent_cell[:18] = [cells[0]] * 9 + [cells[1]] * 9
    archive, info = qd.insert(archive, *as_arrays(rows), parent_cell=parent_cell)
    assert int(archive.children[cells[0]]) == 9 and int(archive.children[cells[1]]) == 9
    assert int(archive.successes[cells[0]]) == int(np.asarray(info.entered)[:9].sum()) > 0
    assert int(archive.successes[cells[1]]) == 0
    w = np.asarray(qd.cell_weights(archive, "curiosity"))
    assert w[cells[0]] > w[cells[1]] > 0
    assert (w[np.asarray(archive.program_id) < 0] == 0).all()
    picks = np.asarray(qd.sample_cells(archive, jax.random.PRNGKey(1), 256, "curiosity"))
    assert (np.asarray(archive.program_id)[picks] >= 0).all()
    assert qd.metrics_host(archive)["validity_total"] == 1.0
    empty = qd.sample_parents(qd.init(SPEC), jax.random.PRNGKey(0), 256)
    assert (np.asarray(empty) == -1).all()
    with pytest.raises(ValueError):
        qd.cell_weights(archive, "bogus")


@settings(max_examples=20)
@given(st.integers(0, 2**31 - 1), st.sampled_from([4, 8, 1000]))
def test_nearest_centroid_lookups_match_brute_force(seed, levels):
    rng = np.random.default_rng(seed)
    # Coarse values (levels=4, 8) make exact distance ties and points on bucket edges common:
    # ties must go to the lowest index. Sizes are not multiples of the chunks (padding paths).
    pts = (rng.integers(-1, levels + 2, (37, 3)) / levels).astype(np.float32)
    cents = (rng.integers(0, levels + 1, (30, 3)) / levels).astype(np.float32)
    dist = ((np.clip(pts, 0, 1)[:, None, :] - cents[None]) ** 2).sum(-1)
    expected = dist.argmin(1)
    brute = qd.nearest_centroid(np.clip(pts, 0, 1), cents, candidate_chunk=8, centroid_chunk=7)
    chex.assert_trees_all_equal(np.asarray(brute), expected.astype(np.int32))
    grid = 3
    index = qd.build_bucket_index(cents, grid)
    assert index.shape[0] == grid**3 and index.shape[1] <= 30
    fast = qd.indexed_nearest_centroid(pts, cents, index, grid, candidate_chunk=16)
    chex.assert_trees_all_equal(np.asarray(fast), expected.astype(np.int32))


@pytest.mark.parametrize("lookup", ["index", "brute"])
def test_cvt_archive_insert_and_kmeans(lookup):
    spec = qd.CVTSpec(
        num_cells=50, low=(0.0, 0.0), high=(1.0, 2.0), centroid_chunk=16, lookup=lookup
    )
    archive = qd.init(spec, seed=3)
    assert (archive.cvt_index is not None) == (lookup == "index")
    cents = np.asarray(archive.centroids)
    assert cents.shape == (50, 2)
    assert (cents >= [0, 0]).all() and (cents <= [1, 2]).all()
    assert len(np.unique(cents.round(5), axis=0)) == 50
    again = qd.init(spec, centroids=archive.centroids, cvt_index=archive.cvt_index)
    chex.assert_trees_all_equal(again, archive)
    rng = np.random.default_rng(0)
    desc = rng.random((64, 2)).astype(np.float32) * [1.2, 2.4] - 0.1
    fit = rng.random(64).astype(np.float32)
    archive, info = qd.insert(archive, fit, desc, np.ones(64, bool), np.arange(64, dtype=np.int32))
    unit = np.clip(desc / np.float32([1, 2]), 0, 1)
    expected = ((unit[:, None] - cents[None] / [1, 2]) ** 2).sum(-1).argmin(1)
    chex.assert_trees_all_equal(np.asarray(info.cell), expected.astype(np.int32))
    for cell in set(expected.tolist()):
        members = np.flatnonzero(expected == cell)
        assert float(archive.fitness[cell]) == fit[members].max()


def test_bucket_index_on_clustered_centroids():
    """Uneven centroid density (big empty regions, dense clusters) must stay exact."""
    rng = np.random.default_rng(5)
    cents = np.concatenate([rng.random((1500, 3)) ** 3, 0.9 + 0.1 * rng.random((500, 3))]).astype(
        np.float32
    )
    pts = rng.random((3000, 3)).astype(np.float32) * 1.1 - 0.05
    grid = qd.cvt.buckets_per_dim(len(cents), 3)
    index = qd.build_bucket_index(cents, grid)
    fast = np.asarray(qd.indexed_nearest_centroid(pts, cents, index, grid))
    brute = np.asarray(qd.nearest_centroid(np.clip(pts, 0, 1), cents))
    chex.assert_trees_all_equal(fast, brute)


def test_indexed_kmeans_equals_jit_kmeans():
    key = jax.random.PRNGKey(0)
    a = qd.kmeans(key, 60, 3, 600, 3)
    b = qd.cvt.kmeans_indexed(key, 60, 3, 600, 3)
    chex.assert_trees_all_equal(a, b)


def test_specs_validate_and_offset_the_qd_score():
    from elmjax.envs.base import DescriptorSpace

    space = DescriptorSpace(("height", "width", "mass"), (0.0, 0.0, 0.0), (60.0, 60.0, 600.0))
    spec = qd.GridSpec.from_space(space, qd_offset=-1.0)
    assert spec.shape == (12, 12, 12) and spec.num_cells == 1728 and spec.high[2] == 600.0
    for bad in (
        dict(shape=(0, 2), low=(0, 0), high=(1, 1)),
        dict(shape=(2, 2), low=(0, 1), high=(1, 1)),
        dict(shape=(2,), low=(0, 0), high=(1, 1)),
    ):
        with pytest.raises(ValueError):
            qd.GridSpec(**bad)
    with pytest.raises(ValueError):
        qd.CVTSpec(10, (0.0,), (1.0,), lookup="nope")
    with pytest.raises(TypeError):
        qd.init("not a spec")
    archive, _ = qd.insert(
        qd.init(qd.GridSpec((2,), (0.0,), (1.0,), qd_offset=-1.0)),
        np.float32([0.5, -0.25]),
        np.float32([[0.1], [0.9]]),
        np.ones(2, bool),
        np.int32([0, 1]),
    )
    assert qd.metrics_host(archive)["qd_score"] == (0.5 + 1.0) + (-0.25 + 1.0)


def _batch(n: int, seed: int = 0, dim: int = 3):
    rng = np.random.default_rng(seed)
    low, high = np.asarray(SPEC.low[:dim]), np.asarray(SPEC.high[:dim])
    return (
        rng.random(n).astype(np.float32),
        (low + rng.random((n, dim)) * (high - low)).astype(np.float32),
        rng.random(n) < 0.8,
        np.arange(n, dtype=np.int32) + 100 * seed,
    )


class InsertVariantsTest(chex.TestCase):
    """The traced insert equals the eager one (Python control flow on traced values, or a
    shape read that only works concretely, would split them)."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_and_eager_agree(self):
        insert = self.variant(qd.insert.__wrapped__)
        archive = qd.init(SPEC, token_length=2)
        expected = archive
        for seed in range(3):
            fit, desc, valid, pid = _batch(PAD, seed)
            tokens = np.stack([pid, -pid], -1)
            parent = np.where(pid % 3 == 0, pid % SPEC.num_cells, -1).astype(np.int32)
            archive, info = insert(archive, fit, desc, valid, pid, tokens, parent)
            expected, want = qd.insert(expected, fit, desc, valid, pid, tokens, parent)
            chex.assert_trees_all_equal((archive, info), (expected, want))
        assert int(archive.n_evaluated) == 3 * PAD


def test_same_shapes_never_retrace():
    """Generation 2 (new values, same shapes) must not trace `insert` again; a new batch size
    must (the positive control: the bound is live)."""
    archive = qd.init(SPEC)
    archive, _ = qd.insert(archive, *_batch(PAD, 0), parent_cell=np.full(PAD, -1, np.int32))
    with tracing.max_traces(0):
        for seed in (1, 2):
            fit, desc, valid, pid = _batch(PAD, seed)
            archive, _ = qd.insert(
                archive, fit, desc, valid, pid, parent_cell=np.full(PAD, 5, np.int32)
            )
        # a host (numpy) archive of the same shapes is the same program too
        qd.insert(jax.device_get(archive), fit, desc, valid, pid, parent_cell=pid % 7)
        with pytest.raises(AssertionError, match="'insert' is traced > 0 times"):
            qd.insert(archive, *_batch(PAD + 1, 3))


@pytest.mark.parametrize(
    "argument, change",
    [
        ("fitness", lambda b: {**b, "fitness": b["fitness"][:, None]}),
        ("descriptor", lambda b: {**b, "descriptor": b["descriptor"][:, :2]}),
        ("descriptor", lambda b: {**b, "descriptor": b["descriptor"][:-1]}),
        ("valid", lambda b: {**b, "valid": b["valid"][:-1]}),
        ("valid", lambda b: {**b, "valid": b["valid"].astype(np.float32)}),
        ("program_id", lambda b: {**b, "program_id": b["program_id"].astype(np.float32)}),
        ("program_id", lambda b: {**b, "program_id": b["program_id"][:, None]}),
        ("tokens", lambda b: {**b, "tokens": b["tokens"][:, :3]}),
        ("parent_cell", lambda b: {**b, "parent_cell": b["parent_cell"][:-2]}),
    ],
)
def test_wrong_input_names_the_argument(argument, change):
    archive = qd.init(SPEC, token_length=4)
    fit, desc, valid, pid = _batch(8)
    good = dict(
        fitness=fit,
        descriptor=desc,
        valid=valid,
        program_id=pid,
        tokens=np.zeros((8, 4), np.int32),
        parent_cell=np.full(8, -1, np.int32),
    )
    qd.insert(archive, **good)  # the unchanged batch is fine
    with pytest.raises(AssertionError, match=rf"qd\.insert: {argument}\b"):
        qd.insert(archive, **change(good))


@pytest.mark.parametrize(
    "field, broken",
    [
        ("archive.descriptor", lambda a: a.replace(descriptor=a.descriptor[:, :2])),
        ("archive.program_id", lambda a: a.replace(program_id=a.program_id[:-1])),
        ("archive.children", lambda a: a.replace(children=a.children.astype(jnp.float32))),
        ("archive.n_valid", lambda a: a.replace(n_valid=a.n_valid[None])),
    ],
)
def test_an_inconsistent_archive_is_named_by_every_entry_point(field, broken):
    """An archive restored or built for another layout fails at the door of insert, metrics
    and selection, naming the field, instead of being indexed with the wrong cells."""
    bad = broken(qd.init(SPEC))
    with pytest.raises(AssertionError, match=rf"qd\.insert: {field}\b"):
        qd.insert(bad, *_batch(4))
    with pytest.raises(AssertionError, match=rf"qd\.metrics: {field}\b"):
        qd.metrics(bad)
    with pytest.raises(AssertionError, match=rf"qd\.sample_cells: {field}\b"):
        qd.sample_parents(bad, jax.random.key(0), 4)


def test_centroid_lookups_name_a_wrong_argument():
    pts = np.random.default_rng(0).random((10, 3)).astype(np.float32)
    cents = pts[:4]
    index = qd.build_bucket_index(cents, 2)
    with pytest.raises(AssertionError, match=r"qd\.nearest_centroid: centroids must be \[C, D=3\]"):
        qd.nearest_centroid(pts, cents[:, :2])
    with pytest.raises(AssertionError, match=r"qd\.nearest_centroid: points must be \[N, D\]"):
        qd.nearest_centroid(pts[None], cents)
    with pytest.raises(AssertionError, match=r"qd\.indexed_nearest_centroid: index must be"):
        qd.indexed_nearest_centroid(pts, cents, index[:-1], 2)
    with pytest.raises(AssertionError, match=r"qd\.indexed_nearest_centroid: unit_points\b"):
        qd.indexed_nearest_centroid(pts.astype(np.int32), cents, index, 2)
