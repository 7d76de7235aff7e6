# Galloper: a rigid body of two braced boxes on a rear and a front leg. Each foot hangs from
# the two hips above it by two muscles a quarter cycle apart, so the foot travels round a
# loop (down, back, up, forward) instead of swinging to and fro; the front leg lags the rear
# leg by LEG_OFFSET, the bounding rhythm of a gallop.

NUM_BOXES = 2  # boxes in the body, one leg under each
BOX_WIDTH = 5.0
BOX_HEIGHT = 3.0
LEG_LENGTH = 6.0  # height of the body's underside above the feet (the feet stand at y = 0)
AMPLITUDE = 10.0  # leg muscle strength
LEG_OFFSET = 0.25  # phase lag of each leg behind the one before it (cycles)
LOOP_OFFSET = 0.25  # phase lag between a leg's two muscles (makes the foot loop)


def brace(wc, a, b, c, d):
    """Make the box a-b-c-d (corners in order) rigid: four sides and both diagonals."""
    for p, q in ((a, b), (b, c), (c, d), (d, a), (a, c), (b, d)):
        wc.add_muscle(p, q)


def add_leg(wc, hip_back, hip_front, foot_x, phase):
    """A foot on the ground between two hips, hung from them by two phased muscles."""
    foot = wc.add_joint(foot_x, 0.0)
    wc.add_muscle(hip_back, foot, AMPLITUDE, phase % 1.0)
    wc.add_muscle(hip_front, foot, AMPLITUDE, (phase + LOOP_OFFSET) % 1.0)
    return foot


def make_walker():
    wc = walker_creator()

    # the body: a row of braced boxes
    hips = [wc.add_joint(k * BOX_WIDTH, LEG_LENGTH) for k in range(NUM_BOXES + 1)]
    back = [wc.add_joint(k * BOX_WIDTH, LEG_LENGTH + BOX_HEIGHT) for k in range(NUM_BOXES + 1)]
    for k in range(NUM_BOXES):
        brace(wc, hips[k], hips[k + 1], back[k + 1], back[k])

    # one leg under each box, each a little later in the cycle than the one behind it
    for k in range(NUM_BOXES):
        foot_x = (k + 0.5) * BOX_WIDTH
        add_leg(wc, hips[k], hips[k + 1], foot_x, k * LEG_OFFSET)

    return wc.get_walker()
