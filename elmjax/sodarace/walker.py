"""The API that Sodarace programs call, its validation, and the walker descriptors.

A program defines `make_walker()`:

    def make_walker():
        wc = walker_creator()
        a = wc.add_joint(0.0, 0.0)
        b = wc.add_joint(10.0, 0.0)
        wc.add_muscle(a, b)                  # passive connection ("bone")
        wc.add_muscle(a, b, 5.0, 0.25)       # OpenELM form: amplitude, phase (cycles)
        wc.add_muscle(a, b, False, 5.0, 0.25)  # ELM paper listing form: flag, amplitude, phase
        return wc.get_walker()

How the paper's `flag` is read: the ELM paper's Square seed passes `False` for the prongs its own
comment calls "active" (`wc.add_muscle(sides[0], center, False, 5.0, 0.0)`), so the flag cannot
mean "active". elmjax ignores it: a connection oscillates exactly when its amplitude is nonzero,
whatever the flag says. The flag must still be a bool (or 0/1), so a misplaced number is caught;
and amplitude, phase and coordinates must be int or float, never bool, so a flag in the wrong
place is caught too. `(j0, j1, amplitude)` (phase 0) is accepted as well. A connection with zero
amplitude is a bone and its phase is dropped (set to 0), so `from_dict(w.to_dict()) == w`.

This module imports no JAX: it runs inside sandbox workers under a small memory limit, and its
descriptors are the ones the simulator and the archive use, so `elmjax exec` and `elmjax simulate`
agree on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from elmjax.sandbox.schemas import ReplyError

# ---- limits: every constant in one place, with the reason for it -------------------------------

#: Joints per walker. The simulator's largest size bucket holds 64 joints; more than that is
#: beyond every published Sodarace walker (CPPN seeds use ~25) and costs every batch neighbour.
MAX_JOINTS = 64
#: Connections per walker; the largest simulator bucket holds 512 springs (~8 per joint).
MAX_MUSCLES = 512
#: Connections at one joint. Beyond ~24 the joint is a hairball that only stiffens the body and
#: makes the explicit spring forces at that joint stiff (small time step needed).
MAX_MUSCLES_PER_JOINT = 24
#: |amplitude|. The paper uses 2, 5 and 10; the simulator saturates amplitude smoothly, so any
#: value up to 100 is legal and distinct, and larger ones are almost certainly a generation error.
MAX_AMPLITUDE = 100.0
#: |phase| in cycles; phase is periodic, so big values only lose float32 precision.
MAX_PHASE = 1000.0
#: |x| and |y| of a joint. Seeds span 10-30 units; 100 leaves room to grow while keeping every
#: walker inside the archive's descriptor ranges and the simulator's float32 precision.
MAX_COORDINATE = 100.0
#: Minimum distance between any two joints: coincident joints make zero-length springs (infinite
#: stiffness per unit length) and are never what a program meant.
MIN_JOINT_DISTANCE = 0.1

#: Mass of one joint (OpenELM: 1 per joint).
JOINT_MASS = 1.0
#: Mass per unit rest length of a connection (OpenELM: 0.5). The descriptor "mass" is
#: JOINT_MASS * joints + RHO * sum of connection rest lengths.
RHO = 0.5


class WalkerError(ValueError):
    """A walker that breaks a rule: the message names the rule and the offending value."""


@dataclass(frozen=True)
class Joint:
    """A handle returned by `add_joint`; programs pass it back to `add_muscle`."""

    index: int
    x: float
    y: float


@dataclass(frozen=True)
class Muscle:
    """A connection. `amplitude == 0` is a passive bone; otherwise it oscillates."""

    i: int
    j: int
    amplitude: float = 0.0
    phase: float = 0.0

    @property
    def active(self) -> bool:
        return self.amplitude != 0.0


@dataclass(frozen=True)
class Walker:
    """A validated walker: joint positions and connections (indices into `joints`)."""

    joints: tuple[tuple[float, float], ...]
    muscles: tuple[Muscle, ...]

    def to_dict(self) -> dict[str, Any]:
        """The ELM paper's dict form (plain lists, floats and ints only)."""
        return {
            "joints": [[float(x), float(y)] for x, y in self.joints],
            "muscles": [
                [
                    int(m.i),
                    int(m.j),
                    {
                        "type": "muscle" if m.active else "distance",
                        "amplitude": float(m.amplitude),
                        "phase": float(m.phase),
                    },
                ]
                for m in self.muscles
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Walker:
        """Inverse of `to_dict`; validates. A "distance" entry is passive whatever its amplitude."""
        if not isinstance(data, dict) or "joints" not in data or "muscles" not in data:
            raise WalkerError("walker dict needs 'joints' and 'muscles'")
        wc = WalkerCreator()
        handles = [wc.add_joint(*_pair(p)) for p in _bounded_list(data["joints"], MAX_JOINTS)]
        for entry in _bounded_list(data["muscles"], MAX_MUSCLES):
            if not isinstance(entry, list | tuple) or len(entry) != 3:
                raise WalkerError(f"muscle entry must be [i, j, {{...}}], got {entry!r:.80}")
            i, j, spec = entry
            if not isinstance(spec, dict):
                raise WalkerError("muscle spec must be a dict")
            kind = spec.get("type", "muscle")
            if kind not in ("distance", "muscle"):
                raise WalkerError(f"muscle type must be 'distance' or 'muscle', got {kind!r:.40}")
            if kind == "distance":
                wc.add_muscle(_handle(handles, i), _handle(handles, j))
            else:
                wc.add_muscle(
                    _handle(handles, i),
                    _handle(handles, j),
                    spec.get("amplitude", 0.0),
                    spec.get("phase", 0.0),
                )
        return wc.get_walker()

    def descriptor(self) -> tuple[float, float, float]:
        """(height, width, mass); see `descriptors`."""
        return descriptors(self)


class WalkerCreator:
    """Builds a walker joint by joint. Rules are enforced as calls happen, so a program that tries
    to add 100k joints fails at the 65th, not after allocating them all."""

    def __init__(self) -> None:
        self._joints: list[tuple[float, float]] = []
        self._muscles: list[Muscle] = []
        self._degree: list[int] = []

    def add_joint(self, x: float, y: float) -> Joint:
        if len(self._joints) >= MAX_JOINTS:
            raise WalkerError(f"too many joints: more than MAX_JOINTS={MAX_JOINTS}")
        x = _number(x, "joint x", MAX_COORDINATE)
        y = _number(y, "joint y", MAX_COORDINATE)
        self._joints.append((x, y))
        self._degree.append(0)
        return Joint(len(self._joints) - 1, x, y)

    def add_muscle(self, j0: Any, j1: Any, *args: Any, **kwargs: Any) -> Muscle:
        """`(j0, j1)`, `(j0, j1, amplitude, phase)` or `(j0, j1, flag, amplitude, phase)`;
        `amplitude=` and `phase=` may also be keywords. See the module docstring for `flag`."""
        unknown = set(kwargs) - {"amplitude", "phase"}
        if unknown:
            raise WalkerError(f"add_muscle got unexpected keywords {sorted(unknown)}")
        if len(args) > 3:
            raise WalkerError(f"add_muscle takes 2 to 5 positional arguments, got {len(args) + 2}")
        if len(args) == 3:
            flag, *args = args
            if type(flag) not in (bool, int) or flag not in (0, 1):
                raise WalkerError(f"add_muscle flag must be a bool, got {type(flag).__name__}")
        names = ("amplitude", "phase")
        values = dict(zip(names, args))
        for key, value in kwargs.items():
            if key in values:
                raise WalkerError(f"add_muscle got {key} twice")
            values[key] = value
        amplitude = _number(values.get("amplitude", 0.0), "amplitude", MAX_AMPLITUDE)
        phase = _number(values.get("phase", 0.0), "phase", MAX_PHASE)
        if amplitude == 0.0:  # a bone: its phase means nothing, and the dict form drops it
            amplitude, phase = 0.0, 0.0
        i, j = self._index(j0), self._index(j1)
        if i == j:
            raise WalkerError(f"muscle connects joint {i} to itself")
        if len(self._muscles) >= MAX_MUSCLES:
            raise WalkerError(f"too many muscles: more than MAX_MUSCLES={MAX_MUSCLES}")
        for k in (i, j):
            if self._degree[k] >= MAX_MUSCLES_PER_JOINT:
                raise WalkerError(
                    f"joint {k} has more than MAX_MUSCLES_PER_JOINT={MAX_MUSCLES_PER_JOINT}"
                )
        self._degree[i] += 1
        self._degree[j] += 1
        muscle = Muscle(i, j, amplitude, phase)
        self._muscles.append(muscle)
        return muscle

    def get_walker(self) -> Walker:
        walker = Walker(tuple(self._joints), tuple(self._muscles))
        validate(walker)
        return walker

    def _index(self, handle: Any) -> int:
        if isinstance(handle, Joint):
            index = handle.index
        elif type(handle) is int:
            index = handle
        else:
            raise WalkerError(
                f"muscle endpoint must be a joint from add_joint, got {type(handle).__name__}"
            )
        if not 0 <= index < len(self._joints) or (
            isinstance(handle, Joint) and (handle.x, handle.y) != self._joints[index]
        ):
            raise WalkerError(f"muscle names joint {index}, which this walker does not have")
        return index


def walker_creator() -> WalkerCreator:
    """The entry point of the API, as in the ELM paper's listings."""
    return WalkerCreator()


def validate(walker: Walker) -> None:
    """Raise WalkerError naming the first rule `walker` breaks."""
    n = len(walker.joints)
    if n < 2:
        raise WalkerError(f"a walker needs at least 2 joints, got {n}")
    if n > MAX_JOINTS:
        raise WalkerError(f"too many joints: {n} > MAX_JOINTS={MAX_JOINTS}")
    if not walker.muscles:
        raise WalkerError("a walker needs at least 1 muscle")
    if len(walker.muscles) > MAX_MUSCLES:
        raise WalkerError(f"too many muscles: {len(walker.muscles)} > MAX_MUSCLES={MAX_MUSCLES}")
    for k, (x, y) in enumerate(walker.joints):
        _number(x, f"joint {k} x", MAX_COORDINATE)
        _number(y, f"joint {k} y", MAX_COORDINATE)
    min_d2 = MIN_JOINT_DISTANCE**2
    for a in range(n):
        xa, ya = walker.joints[a]
        for b in range(a + 1, n):
            xb, yb = walker.joints[b]
            if (xa - xb) ** 2 + (ya - yb) ** 2 < min_d2:
                raise WalkerError(
                    f"joints {a} and {b} are closer than MIN_JOINT_DISTANCE={MIN_JOINT_DISTANCE}"
                )
    degree = [0] * n
    for m in walker.muscles:
        if not (0 <= m.i < n and 0 <= m.j < n) or m.i == m.j:
            raise WalkerError(f"muscle ({m.i}, {m.j}) does not join two distinct joints")
        _number(m.amplitude, "amplitude", MAX_AMPLITUDE)
        _number(m.phase, "phase", MAX_PHASE)
        degree[m.i] += 1
        degree[m.j] += 1
    worst = max(range(n), key=degree.__getitem__)
    if degree[worst] > MAX_MUSCLES_PER_JOINT:
        raise WalkerError(
            f"joint {worst} has more than MAX_MUSCLES_PER_JOINT={MAX_MUSCLES_PER_JOINT}"
        )
    loose = disconnected_joints(n, [(m.i, m.j) for m in walker.muscles])
    if loose:
        raise WalkerError(disconnected_message(loose))


def disconnected_message(loose: list[int]) -> str:
    """The error for a walker whose joints `loose` (from `disconnected_joints`) are loose."""
    return (
        f"disconnected: joints {loose[:8]} are not connected to joint 0 "
        "(a walker must be one piece)"
    )


def disconnected_joints(num_joints: int, connections: Any) -> list[int]:
    """Joints not reachable from joint 0 through connections (`(i, j, ...)` rows), ascending.

    Empty for a walker in one piece. Loose pieces are not a body: they would move a gait into
    other descriptor cells without being part of it."""
    parent = list(range(num_joints))

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for c in connections:
        a, b = int(c[0]), int(c[1])
        if 0 <= a < num_joints and 0 <= b < num_joints:
            parent[root(a)] = root(b)
    base = root(0) if num_joints else 0
    return [k for k in range(num_joints) if root(k) != base]


def descriptors(walker: Walker) -> tuple[float, float, float]:
    """(height, width, mass): the initial joints' bounding box, and
    mass = JOINT_MASS * joints + RHO * sum of connection rest lengths."""
    xs = [x for x, _ in walker.joints]
    ys = [y for _, y in walker.joints]
    length = sum(math.dist(walker.joints[m.i], walker.joints[m.j]) for m in walker.muscles)
    return (max(ys) - min(ys), max(xs) - min(xs), JOINT_MASS * len(xs) + RHO * length)


def check_walker(obj: Any) -> dict[str, Any]:
    """Sandbox `check` for Sodarace: the value `make_walker()` returned -> validated dict form.

    Only a genuine `Walker` is accepted, and it is rebuilt from its dict form, so a program that
    tampered with the object's fields gets the same validation as one that built it honestly.
    """
    if type(obj) is not Walker:
        raise WalkerError(f"make_walker must return wc.get_walker(), got {type(obj).__name__}")
    data = Walker(tuple(obj.joints), tuple(obj.muscles)).to_dict()
    walker = Walker.from_dict(data)
    out = walker.to_dict()
    height, width, mass = walker.descriptor()
    out["descriptor"] = {"height": height, "width": width, "mass": mass}
    return out


# ---- helpers -------------------------------------------------------------------------------------


def _number(value: Any, what: str, bound: float) -> float:
    # bool is refused: True/False where a number belongs is a misplaced flag, not a number
    if type(value) not in (int, float):
        raise WalkerError(f"{what} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise WalkerError(f"{what} must be finite, got {value}")
    if abs(value) > bound:
        raise WalkerError(f"{what}={value:.6g} is outside [-{bound:g}, {bound:g}]")
    return value


def _pair(p: Any) -> tuple[Any, Any]:
    if not isinstance(p, list | tuple) or len(p) != 2:
        raise WalkerError(f"joint must be [x, y], got {p!r:.80}")
    return p[0], p[1]


def _bounded_list(items: Any, bound: int) -> list[Any]:
    if not isinstance(items, list | tuple):
        raise WalkerError(f"expected a list, got {type(items).__name__}")
    if len(items) > bound:
        raise WalkerError(f"list of {len(items)} exceeds the limit {bound}")
    return list(items)


def _handle(handles: list[Joint], index: Any) -> Joint:
    if type(index) is not int or not 0 <= index < len(handles):
        raise WalkerError(f"muscle names joint {index!r:.20}, which this walker does not have")
    return handles[index]


_WALKER_KEYS = frozenset({"joints", "muscles", "descriptor"})
_DESCRIPTOR_KEYS = ("height", "width", "mass")


_SPEC_KEYS = frozenset({"type", "amplitude", "phase"})


def walker_reply(value: Any) -> dict[str, Any]:
    """`check_walker`'s output, in the paper's dict form plus its descriptor: exactly the keys
    joints/muscles/descriptor and type/amplitude/phase; floats and ints where `Walker.to_dict`
    puts them, finite and within the walker limits; muscle endpoints that are real, distinct
    joints; the count limits (joints, muscles, muscles per joint); and the descriptor the walker
    has. (`MIN_JOINT_DISTANCE`, a rule about the shape rather than the data, is left to the
    worker's `check_walker`.) Checked inline rather than by rebuilding the walker: this runs in
    the caller for every program."""
    if type(value) is not dict or value.keys() != _WALKER_KEYS:
        raise ReplyError("walker reply must have exactly the keys joints, muscles, descriptor")
    joints, muscles = value["joints"], value["muscles"]
    if type(joints) is not list or type(muscles) is not list:
        raise ReplyError("walker joints and muscles must be lists")
    n = len(joints)
    if not 2 <= n <= MAX_JOINTS or not 1 <= len(muscles) <= MAX_MUSCLES:
        raise ReplyError("walker reply breaks the joint or muscle count limits")
    bound = MAX_COORDINATE
    for p in joints:
        if type(p) is not list or len(p) != 2:
            raise ReplyError("a joint must be [x, y]")
        x, y = p
        if type(x) is not float or type(y) is not float or not (abs(x) <= bound >= abs(y)):
            raise ReplyError("joint coordinates must be finite floats within the limit")
    degree = [0] * n
    for entry in muscles:
        if type(entry) is not list or len(entry) != 3:
            raise ReplyError("a muscle must be [i, j, spec]")
        i, j, spec = entry
        if type(i) is not int or type(j) is not int or not (0 <= i < n and 0 <= j < n and i != j):
            raise ReplyError("a muscle must join two distinct joints of the walker")
        if type(spec) is not dict or spec.keys() != _SPEC_KEYS:
            raise ReplyError("a muscle spec has exactly the keys type, amplitude, phase")
        amplitude, phase = spec["amplitude"], spec["phase"]
        if (
            type(amplitude) is not float
            or type(phase) is not float
            or not abs(amplitude) <= MAX_AMPLITUDE
            or not abs(phase) <= MAX_PHASE
        ):
            raise ReplyError("muscle amplitude and phase must be finite floats within the limits")
        if spec["type"] != ("muscle" if amplitude != 0.0 else "distance"):
            raise ReplyError("muscle type does not match its amplitude")
        degree[i] += 1
        degree[j] += 1
    if max(degree) > MAX_MUSCLES_PER_JOINT:
        raise ReplyError("a joint has more muscles than the limit")
    xs, ys = zip(*joints)
    # summed by `sum`, as `walker.descriptors` sums it: the same float, bit for bit, on every
    # Python (3.12's `sum` compensates rounding; a running `+=` would not agree with it)
    length = sum(math.dist(joints[i], joints[j]) for i, j, _ in muscles)
    expected = {
        "height": max(ys) - min(ys),
        "width": max(xs) - min(xs),
        "mass": JOINT_MASS * n + RHO * length,
    }
    if value["descriptor"] != expected:
        raise ReplyError("walker reply's descriptor is not the walker's")
    return value


#: the caller checks every reply of `check_walker` against this (sandbox `schema_for`)
check_walker.reply_schema = walker_reply  # type: ignore[attr-defined]
