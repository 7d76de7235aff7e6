"""The walker API: every add_muscle form, every named limit, the dict round trip, descriptors."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from elmjax.sodarace import walker as W
from elmjax.sodarace.walker import Walker, WalkerError, check_walker, descriptors, walker_creator


def two_joints():
    wc = walker_creator()
    return wc, wc.add_joint(0.0, 0.0), wc.add_joint(10.0, 0.0)


def paper_square() -> Walker:
    """The ELM paper's Listing 1, verbatim in its calls."""
    wc = walker_creator()
    sides = (
        wc.add_joint(0, 0),
        wc.add_joint(0, 10),
        wc.add_joint(10, 10),
        wc.add_joint(10, 0),
    )
    center = wc.add_joint(5, 5)
    for k in range(len(sides) - 1):
        wc.add_muscle(sides[k], sides[k + 1])
    wc.add_muscle(sides[3], sides[0])
    wc.add_muscle(sides[3], center)
    wc.add_muscle(sides[0], center, False, 5.0, 0.0)
    wc.add_muscle(sides[1], center, False, 10.0, 0.0)
    wc.add_muscle(sides[2], center, False, 2.0, 0.0)
    return wc.get_walker()


# ---- add_muscle forms ----------------------------------------------------------------------------


def test_plain_connection_is_a_passive_bone():
    wc, a, b = two_joints()
    m = wc.add_muscle(a, b)
    assert (m.i, m.j, m.amplitude, m.phase, m.active) == (0, 1, 0.0, 0.0, False)


def test_openelm_form_amplitude_phase():
    wc, a, b = two_joints()
    m = wc.add_muscle(a, b, 5.0, 0.25)
    assert (m.amplitude, m.phase, m.active) == (5.0, 0.25, True)


@pytest.mark.parametrize("flag", [False, True, 0, 1])
def test_paper_flag_form_oscillates_whatever_the_flag(flag):
    wc, a, b = two_joints()
    m = wc.add_muscle(a, b, flag, 5.0, 0.25)
    assert (m.amplitude, m.phase, m.active) == (5.0, 0.25, True)


def test_keyword_form_and_integer_handles():
    wc, a, b = two_joints()
    m = wc.add_muscle(0, 1, amplitude=2.0, phase=0.5)
    assert (m.i, m.j, m.amplitude, m.phase) == (0, 1, 2.0, 0.5)
    assert wc.add_muscle(a, b, 3.0, phase=0.1).phase == 0.1
    assert (wc.add_muscle(a, b, 3.0).amplitude, wc.add_muscle(a, b, 3.0).phase) == (3.0, 0.0)


def test_paper_square_reads_its_active_prongs_as_muscles():
    d = paper_square().to_dict()
    prongs = [spec for i, j, spec in d["muscles"] if j == 4 and i != 3]
    assert [p["type"] for p in prongs] == ["muscle"] * 3
    assert [p["amplitude"] for p in prongs] == [5.0, 10.0, 2.0]
    assert d["muscles"][4] == [3, 4, {"type": "distance", "amplitude": 0.0, "phase": 0.0}]


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((False, 5.0, 0.0, 1.0), {}, "2 to 5 positional"),
        ((False,), {}, "amplitude must be a number"),
        ((2.0, 5.0, 0.0), {}, "flag must be a bool"),
        ((2, 5.0, 0.0), {}, "flag must be a bool"),
        ((True, 0.25), {}, "amplitude must be a number"),
        (("5", 0.0), {}, "amplitude must be a number"),
        ((5.0, 0.0), {"phase": 0.1}, "phase twice"),
        ((), {"speed": 1.0}, "unexpected keywords"),
    ],
)
def test_bad_add_muscle_calls_are_rejected(args, kwargs, match):
    wc, a, b = two_joints()
    with pytest.raises(WalkerError, match=match):
        wc.add_muscle(a, b, *args, **kwargs)


def test_bad_endpoints_are_rejected():
    wc, a, b = two_joints()
    with pytest.raises(WalkerError, match="to itself"):
        wc.add_muscle(a, a)
    with pytest.raises(WalkerError, match="does not have"):
        wc.add_muscle(a, 7)
    with pytest.raises(WalkerError, match="does not have"):
        wc.add_muscle(a, W.Joint(1, 3.0, 3.0))  # a handle that is not this walker's joint 1
    with pytest.raises(WalkerError, match="must be a joint"):
        wc.add_muscle(a, (10.0, 0.0))
    with pytest.raises(WalkerError, match="must be a joint"):
        wc.add_muscle(a, 1.0)


def test_zero_amplitude_drops_phase():
    wc, a, b = two_joints()
    assert wc.add_muscle(a, b, 0.0, 0.7).phase == 0.0


# ---- named limits ---------------------------------------------------------------------------------


def test_max_joints():
    wc = walker_creator()
    for k in range(W.MAX_JOINTS):
        wc.add_joint(float(k % 8), float(k // 8))
    with pytest.raises(WalkerError, match="MAX_JOINTS"):
        wc.add_joint(50.0, 50.0)


def test_max_muscles():
    wc = walker_creator()
    joints = [wc.add_joint(float(k % 8), float(k // 8)) for k in range(64)]
    for k in range(64):
        for step in range(1, 9):
            wc.add_muscle(joints[k], joints[(k + step) % 64])
    assert len(wc.get_walker().muscles) == W.MAX_MUSCLES
    with pytest.raises(WalkerError, match="MAX_MUSCLES="):
        wc.add_muscle(joints[0], joints[9])


def test_max_muscles_per_joint():
    wc = walker_creator()
    hub = wc.add_joint(0.0, 0.0)
    rim = [wc.add_joint(math.cos(k / 5), math.sin(k / 5)) for k in range(W.MAX_MUSCLES_PER_JOINT)]
    for j in rim:
        wc.add_muscle(hub, j)
    extra = wc.add_joint(5.0, 5.0)
    with pytest.raises(WalkerError, match="MAX_MUSCLES_PER_JOINT"):
        wc.add_muscle(hub, extra)


@pytest.mark.parametrize(
    "args, match",
    [
        ((W.MAX_AMPLITUDE * 1.01, 0.0), "amplitude"),
        ((-W.MAX_AMPLITUDE * 1.01, 0.0), "amplitude"),
        ((5.0, W.MAX_PHASE + 1), "phase"),
        ((float("nan"), 0.0), "finite"),
        ((5.0, float("inf")), "finite"),
    ],
)
def test_amplitude_and_phase_limits(args, match):
    wc, a, b = two_joints()
    with pytest.raises(WalkerError, match=match):
        wc.add_muscle(a, b, *args)
    wc.add_muscle(a, b, W.MAX_AMPLITUDE, -W.MAX_PHASE)  # the bounds themselves are legal


@pytest.mark.parametrize(
    "x, y, match",
    [
        (W.MAX_COORDINATE + 0.5, 0.0, "outside"),
        (0.0, -W.MAX_COORDINATE - 0.5, "outside"),
        (float("nan"), 0.0, "finite"),
        (0.0, float("-inf"), "finite"),
        ("1", 0.0, "must be a number"),
        (None, 0.0, "must be a number"),
    ],
)
def test_coordinate_limits(x, y, match):
    with pytest.raises(WalkerError, match=match):
        walker_creator().add_joint(x, y)


def test_min_joint_distance():
    wc = walker_creator()
    a = wc.add_joint(0.0, 0.0)
    b = wc.add_joint(W.MIN_JOINT_DISTANCE / 2, 0.0)
    wc.add_muscle(a, b)
    with pytest.raises(WalkerError, match="MIN_JOINT_DISTANCE"):
        wc.get_walker()


def test_walker_needs_two_joints_and_a_muscle():
    wc = walker_creator()
    wc.add_joint(0.0, 0.0)
    with pytest.raises(WalkerError, match="at least 2 joints"):
        wc.get_walker()
    wc.add_joint(1.0, 0.0)
    with pytest.raises(WalkerError, match="at least 1 muscle"):
        wc.get_walker()


def test_validate_catches_hand_built_walkers():
    with pytest.raises(WalkerError, match="distinct"):
        W.validate(Walker(((0.0, 0.0), (1.0, 0.0)), (W.Muscle(0, 5),)))
    with pytest.raises(WalkerError, match="finite"):
        W.validate(Walker(((0.0, 0.0), (1.0, math.nan)), (W.Muscle(0, 1),)))


# ---- dict round trip ------------------------------------------------------------------------------


def test_round_trip_of_the_paper_square():
    w = paper_square()
    d = w.to_dict()
    assert json.loads(json.dumps(d)) == d  # plain data
    assert Walker.from_dict(d) == w
    assert Walker.from_dict(d).to_dict() == d


@pytest.mark.parametrize(
    "data, match",
    [
        ([], "needs 'joints'"),
        ({"joints": [[0, 0], [1, 0]]}, "needs 'joints'"),
        ({"joints": [[0, 0], [1]], "muscles": []}, r"joint must be \[x, y\]"),
        ({"joints": [[0, 0], [1, 0]], "muscles": [[0, 1]]}, "muscle entry"),
        ({"joints": [[0, 0], [1, 0]], "muscles": [[0, 1, 5]]}, "spec must be a dict"),
        ({"joints": [[0, 0], [1, 0]], "muscles": [[0, 1, {"type": "x"}]]}, "type must be"),
        ({"joints": [[0, 0], [1, 0]], "muscles": [[0, 2, {}]]}, "does not have"),
        ({"joints": [[0, 0], [1, 0]], "muscles": [[0, 1.0, {}]]}, "does not have"),
        ({"joints": [[0, 0]] * 100, "muscles": []}, "exceeds the limit"),
        ({"joints": "xy", "muscles": []}, "expected a list"),
    ],
)
def test_from_dict_rejects_malformed_data(data, match):
    with pytest.raises(WalkerError, match=match):
        Walker.from_dict(data)


def test_distance_entries_are_passive_whatever_their_amplitude():
    d = {"joints": [[0, 0], [3, 0]], "muscles": [[0, 1, {"type": "distance", "amplitude": 9}]]}
    assert Walker.from_dict(d).muscles[0].active is False


_coordinate = st.integers(-40, 40).map(lambda k: k * 2.5)


@st.composite
def walkers(draw):
    points = draw(
        st.lists(st.tuples(_coordinate, _coordinate), min_size=2, max_size=20, unique=True)
    )
    n = len(points)
    # a chain through every joint first: a walker must be one connected piece
    pairs = [(k, k + 1) for k in range(n - 1)] + draw(
        st.lists(
            st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)).filter(lambda p: p[0] != p[1]),
            min_size=0,
            max_size=40,
        )
    )
    wc = walker_creator()
    handles = [wc.add_joint(x, y) for x, y in points]
    degree = [0] * n
    for i, j in pairs:
        if degree[i] >= W.MAX_MUSCLES_PER_JOINT or degree[j] >= W.MAX_MUSCLES_PER_JOINT:
            continue
        degree[i] += 1
        degree[j] += 1
        form = draw(st.sampled_from(["bone", "openelm", "paper"]))
        amp = draw(st.floats(-W.MAX_AMPLITUDE, W.MAX_AMPLITUDE, allow_nan=False))
        phase = draw(st.floats(-W.MAX_PHASE, W.MAX_PHASE, allow_nan=False))
        if form == "bone":
            wc.add_muscle(handles[i], handles[j])
        elif form == "openelm":
            wc.add_muscle(handles[i], handles[j], amp, phase)
        else:
            wc.add_muscle(handles[i], handles[j], draw(st.booleans()), amp, phase)
    return wc.get_walker()


@given(walkers())
def test_round_trip_property(w):
    d = w.to_dict()
    assert json.loads(json.dumps(d)) == d
    again = Walker.from_dict(d)
    assert again == w
    assert again.to_dict() == d
    assert check_walker(w)["descriptor"] == dict(zip(("height", "width", "mass"), descriptors(w)))


# ---- descriptors ----------------------------------------------------------------------------------


def test_descriptors_of_the_paper_square():
    height, width, mass = descriptors(paper_square())
    rest = 4 * 10.0 + 4 * math.hypot(5.0, 5.0)
    assert (height, width) == (10.0, 10.0)
    assert mass == pytest.approx(5 * W.JOINT_MASS + W.RHO * rest)


def test_descriptors_are_translation_invariant_and_scale_with_size():
    def bar(x0, length):
        wc = walker_creator()
        wc.add_muscle(wc.add_joint(x0, 3.0), wc.add_joint(x0 + length, 7.0))
        return wc.get_walker()

    assert descriptors(bar(0.0, 4.0)) == descriptors(bar(20.0, 4.0))
    h, w, m = descriptors(bar(0.0, 8.0))
    assert (h, w, m) == (4.0, 8.0, pytest.approx(2 * W.JOINT_MASS + W.RHO * math.hypot(8, 4)))


def test_check_walker_returns_dict_form_and_descriptor():
    out = check_walker(paper_square())
    assert set(out) == {"joints", "muscles", "descriptor"}
    assert out["descriptor"]["width"] == 10.0
    with pytest.raises(WalkerError, match="must return"):
        check_walker(paper_square().to_dict())
