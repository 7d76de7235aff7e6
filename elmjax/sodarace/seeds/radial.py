# Radial: masses on a circle around a centre mass. The rim is joined by passive
# distance connections; every spoke from the centre is an active muscle.
import math

NUM_RIM = 8  # masses on the circle
RADIUS = 8.0  # circle radius
CENTER_X, CENTER_Y = 10.0, 10.0
AMPLITUDE = 5.0  # spoke muscle strength
PHASE_STEP = 0.5  # neighbouring spokes are half a cycle apart


def make_circle(wc, cx, cy, radius, num_points):
    """Place num_points joints evenly on a circle; return their handles."""
    points = []
    for k in range(num_points):
        angle = 2.0 * math.pi * k / num_points
        points.append(wc.add_joint(cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def make_walker():
    wc = walker_creator()

    rim = make_circle(wc, CENTER_X, CENTER_Y, RADIUS, NUM_RIM)
    center = wc.add_joint(CENTER_X, CENTER_Y)

    # the rim: each mass is tied to its neighbour by a distance connection
    for k in range(NUM_RIM):
        wc.add_muscle(rim[k], rim[(k + 1) % NUM_RIM])

    # the spokes: active muscles from the centre to every rim mass
    for k in range(NUM_RIM):
        wc.add_muscle(center, rim[k], AMPLITUDE, k * PHASE_STEP)

    return wc.get_walker()
