# CPPN-Mutable: masses on a grid, connections decided by a small CPPN (compositional
# pattern-producing network) that is part of this program: its nodes, activation
# functions and weights below may all be changed.
import math

GRID_COLS = 4  # masses per row
GRID_ROWS = 4  # rows of masses
SPACING = 5.0  # distance between neighbouring masses
MAX_REACH = 1.5  # connect masses at most this many grid steps apart
CONNECT_THRESHOLD = 0.0  # connect a pair when the "connect" output is above this
ACTIVE_THRESHOLD = 0.2  # ...and make it an active muscle when "activity" is above this
MAX_AMPLITUDE = 10.0

ACTIVATIONS = {
    "sin": math.sin,
    "tanh": math.tanh,
    "gauss": lambda v: math.exp(-v * v),
    "abs": abs,
    "identity": lambda v: v,
}

# Hidden nodes: (name, activation, {input name: weight}).
# Inputs: x1, y1, x2, y2 (grid coordinates in 0..1), dx, dy, dist, bias (always 1).
HIDDEN = [
    ("h1", "sin", {"x1": 2.0, "x2": 2.0, "dy": 1.5}),
    ("h2", "gauss", {"y1": 1.5, "y2": 1.5, "bias": -1.5}),
    ("h3", "tanh", {"dx": 3.0, "dist": -1.0, "bias": 0.5}),
]

# Outputs: (name, activation, {input or hidden name: weight}).
OUTPUTS = [
    ("connect", "tanh", {"h1": 1.0, "h2": 1.0, "h3": 0.5, "dist": -1.0, "bias": 0.3}),
    ("activity", "sin", {"h1": 1.5, "h3": -1.0, "y1": 1.0}),
    ("phase", "identity", {"h1": 0.5, "dx": 0.25, "x1": 0.5}),
]


def evaluate_nodes(nodes, values):
    """Compute each node from the values computed so far; store and return the values."""
    for name, activation, weights in nodes:
        total = sum(w * values[src] for src, w in weights.items())
        values[name] = ACTIVATIONS[activation](total)
    return values


def query_cppn(x1, y1, x2, y2):
    """CPPN: grid coordinates of two masses -> (connect, activity, phase in cycles)."""
    dx, dy = x2 - x1, y2 - y1
    values = {"x1": x1, "y1": y1, "x2": x2, "y2": y2, "dx": dx, "dy": dy}
    values["dist"] = math.hypot(dx, dy)
    values["bias"] = 1.0
    evaluate_nodes(HIDDEN, values)
    evaluate_nodes(OUTPUTS, values)
    return values["connect"], values["activity"], values["phase"] % 1.0


def make_walker():
    wc = walker_creator()

    # place the masses on a grid, remembering each one's grid coordinates
    joints = []
    for row in range(GRID_ROWS):
        for col in range(GRID_COLS):
            handle = wc.add_joint(col * SPACING, row * SPACING)
            joints.append((handle, col / (GRID_COLS - 1), row / (GRID_ROWS - 1), col, row))

    # ask the CPPN about every pair of nearby masses
    for a in range(len(joints)):
        for b in range(a + 1, len(joints)):
            ja, xa, ya, ca, ra = joints[a]
            jb, xb, yb, cb, rb = joints[b]
            if math.hypot(ca - cb, ra - rb) > MAX_REACH:
                continue
            connect, activity, phase = query_cppn(xa, ya, xb, yb)
            if connect < CONNECT_THRESHOLD:
                continue
            if activity > ACTIVE_THRESHOLD:
                wc.add_muscle(ja, jb, MAX_AMPLITUDE * activity, phase)
            else:
                wc.add_muscle(ja, jb)

    return wc.get_walker()
