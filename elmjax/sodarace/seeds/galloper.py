# Galloper: a rigid body (two braced boxes) on a rear and a front leg. Each foot hangs from
# two hips by two muscles a quarter cycle apart, so the foot travels round a loop (down,
# back, up, forward) instead of just swinging; the front leg lags the rear by LEG_OFFSET.

BODY_LEFT, BODY_RIGHT = 0.0, 16.0  # x extent of the body
BODY_BOTTOM, BODY_TOP = 6.0, 10.0  # y extent of the body (the feet stand at y = 0)
FOOT_INSET = 2.0  # how far each foot stands in from the body's end
AMPLITUDE = 5.0  # leg muscle strength
LEG_OFFSET = 0.25  # phase lag of the front leg behind the rear leg (cycles)
LOOP_OFFSET = 0.25  # phase lag between a leg's two muscles (makes the foot loop)


def brace(wc, a, b, c, d):
    """Make the box a-b-c-d (corners in order) rigid: four sides and both diagonals."""
    for p, q in ((a, b), (b, c), (c, d), (d, a), (a, c), (b, d)):
        wc.add_muscle(p, q)


def add_leg(wc, foot_x, hip_back, hip_front, phase):
    """A foot at ground level under two hips, hung from them by two phased muscles."""
    foot = wc.add_joint(foot_x, 0.0)
    wc.add_muscle(hip_back, foot, AMPLITUDE, phase)
    wc.add_muscle(hip_front, foot, AMPLITUDE, (phase + LOOP_OFFSET) % 1.0)
    return foot


def make_walker():
    wc = walker_creator()

    middle = (BODY_LEFT + BODY_RIGHT) / 2.0
    bottom = [wc.add_joint(x, BODY_BOTTOM) for x in (BODY_LEFT, middle, BODY_RIGHT)]
    top = [wc.add_joint(x, BODY_TOP) for x in (BODY_LEFT, middle, BODY_RIGHT)]

    # the body: two braced boxes sharing the middle post
    brace(wc, bottom[0], bottom[1], top[1], top[0])
    brace(wc, bottom[1], bottom[2], top[2], top[1])

    # rear leg under the rear box, front leg under the front box
    add_leg(wc, BODY_LEFT + FOOT_INSET, bottom[0], bottom[1], 0.0)
    add_leg(wc, BODY_RIGHT - FOOT_INSET, bottom[1], bottom[2], LEG_OFFSET)

    return wc.get_walker()
