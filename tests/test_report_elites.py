"""Elite cards: diff against the parent, diagnostics when present, clipped flags."""

from __future__ import annotations

import types

from elmjax.qd.archive import GridSpec
from elmjax.viz.elites import (
    DIAGNOSTICS,
    clipped_axes,
    clipped_section,
    clipped_text,
    diagnostics_of,
    parent_diff,
)

PARENT = "def make_walker():\n    wc = walker_creator()\n    a = 5.0\n    return wc.get_walker()\n"
CHILD = "def make_walker():\n    wc = walker_creator()\n    a = 7.5\n    return wc.get_walker()\n"


def test_diff_against_the_parent_shows_the_edit():
    diff = parent_diff(PARENT, CHILD, "program 3 (parent)", "program 9")
    assert diff.startswith("--- program 3 (parent)\n+++ program 9\n")
    assert "-    a = 5.0\n" in diff and "+    a = 7.5\n" in diff
    assert parent_diff(PARENT, PARENT, "a", "b") == ""


def test_diagnostics_are_shown_when_present_and_skipped_when_not():
    names = [key for key, _, _ in DIAGNOSTICS]
    assert names == ["airborne_fraction", "peak_speed", "bone_error", "muscle_work"]
    old = types.SimpleNamespace(extras={"detail": "constant 0.0 -> 0.3"})  # a run before them
    assert diagnostics_of(old) == {}
    in_extras = types.SimpleNamespace(extras={"bone_error": 0.01, "peak_speed": 3})
    assert diagnostics_of(in_extras) == {"bone_error": 0.01, "peak_speed": 3.0}
    as_columns = types.SimpleNamespace(
        extras=None, airborne_fraction=0.25, peak_speed=None, muscle_work=1.5, bone_error=True
    )
    assert diagnostics_of(as_columns) == {"airborne_fraction": 0.25, "muscle_work": 1.5}


def test_clipped_elites_are_flagged_with_their_bin():
    spec = GridSpec((12, 12, 12), (0, 0, 0), (60, 60, 600))
    assert clipped_axes([71.0, 20.0, 100.0], spec.low, spec.high) == [0]
    assert clipped_axes([60.0, 0.0, 600.0], spec.low, spec.high) == []  # the bounds are inside
    elite = {"descriptor": [71.0, 20.0, 100.0], "clipped": [0]}
    text = clipped_text(elite, ("height", "width", "mass"), spec)
    assert text == "clipped: height 71.0 is above the grid's 0-60 (in the 55-60+ bin)"
    archive = types.SimpleNamespace(spec=spec)
    data = {
        "archive": archive,
        "descriptor_names": ("height", "width", "mass"),
        "elites": [
            {"program_id": 4, "cell": 1700, "fitness": 12.0, **elite},
            {"program_id": 5, "cell": 3, "fitness": 9.0, "descriptor": [1, 2, 3], "clipped": []},
        ],
    }
    page = clipped_section(data)
    assert "1 elite(s)" in page and "<td>4</td>" in page and "<td>5</td>" not in page
    data["elites"] = data["elites"][1:]
    assert "None: every elite lies inside" in clipped_section(data)
