# Wheel: masses on a rim around a hub. The rim is a loop of passive connections; every
# spoke is a muscle, and the spokes' phases step around the rim (phase = k / NUM_SPOKES),
# so a wave of contraction travels around the wheel and rolls it along the ground.
import math

NUM_SPOKES = 10  # rim masses, one spoke each
RADIUS = 7.0  # rim radius
HUB_X, HUB_Y = 8.0, 8.0  # hub position
AMPLITUDE = 5.0  # spoke muscle strength
DIRECTION = 1  # +1 or -1: which way the wave travels (and so which way the wheel rolls)


def make_walker():
    wc = walker_creator()

    hub = wc.add_joint(HUB_X, HUB_Y)
    rim = []
    for k in range(NUM_SPOKES):
        angle = 2.0 * math.pi * k / NUM_SPOKES
        rim.append(wc.add_joint(HUB_X + RADIUS * math.cos(angle), HUB_Y + RADIUS * math.sin(angle)))

    # the rim: neighbouring masses held at a fixed distance
    for k in range(NUM_SPOKES):
        wc.add_muscle(rim[k], rim[(k + 1) % NUM_SPOKES])

    # the spokes: muscles whose phase steps around the wheel
    for k in range(NUM_SPOKES):
        phase = (DIRECTION * k / NUM_SPOKES) % 1.0
        wc.add_muscle(hub, rim[k], AMPLITUDE, phase)

    return wc.get_walker()
