# CPPN-Fixed: masses on a grid; a fixed CPPN-like function of the two end points decides
# whether each pair of nearby masses is connected, and the amplitude and phase of the
# connection. Only the code around the CPPN (grid size, spacing, thresholds) is meant to
# change; query_cppn stays fixed.
import math

GRID_COLS = 4  # masses per row
GRID_ROWS = 4  # rows of masses
SPACING = 5.0  # distance between neighbouring masses
MAX_REACH = (
    1.5  # connect masses at most this many grid steps apart (1 = neighbours, 1.41 = diagonals)
)
CONNECT_THRESHOLD = -0.2  # connect a pair when the CPPN's first output is above this
ACTIVE_THRESHOLD = 0.3  # the connection is an active muscle when the second output is above this
MAX_AMPLITUDE = 10.0


def query_cppn(x1, y1, x2, y2):
    """Fixed CPPN: grid coordinates (0..1) of two masses -> (connect, activity, phase)."""
    dx, dy = x2 - x1, y2 - y1
    mx, my = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    h1 = math.sin(3.0 * mx + 1.0 * dy)
    h2 = math.exp(-((my - 0.5) ** 2) * 4.0)
    h3 = math.tanh(2.0 * dx - my)
    connect = math.tanh(h1 + h2 - 0.5 * abs(h3))
    activity = math.sin(2.0 * h1 - h3 + 1.5 * my)
    phase = (math.atan2(dy, dx) / (2.0 * math.pi) + mx) % 1.0
    return connect, activity, phase


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
