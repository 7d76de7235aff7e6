# Runner: a small rigid body on two long legs that step alternately. Both feet hang from
# the same two hips by two muscles each; a leg's two muscles are a quarter cycle apart,
# so its foot travels round a loop, and the second leg is half a cycle behind the first.

BODY_LEFT, BODY_RIGHT = 2.0, 10.0  # x extent of the body
BODY_BOTTOM, BODY_TOP = 12.0, 15.0  # y extent of the body (the feet stand at y = 0)
FEET_X = (0.0, 12.0)  # where the two feet stand, spread wider than the body for balance
AMPLITUDE = 5.0  # leg muscle strength
STEP_OFFSET = 0.5  # phase lag of the second leg behind the first (cycles)
LOOP_OFFSET = 0.25  # phase lag between a leg's two muscles (makes the foot loop)


def add_leg(wc, foot_x, hip_back, hip_front, phase):
    """A foot at ground level hung from two hips by two phased muscles."""
    foot = wc.add_joint(foot_x, 0.0)
    wc.add_muscle(hip_back, foot, AMPLITUDE, phase)
    wc.add_muscle(hip_front, foot, AMPLITUDE, (phase + LOOP_OFFSET) % 1.0)
    return foot


def make_walker():
    wc = walker_creator()

    # the body: one braced box (four sides and both diagonals)
    hip_back = wc.add_joint(BODY_LEFT, BODY_BOTTOM)
    hip_front = wc.add_joint(BODY_RIGHT, BODY_BOTTOM)
    head_front = wc.add_joint(BODY_RIGHT, BODY_TOP)
    head_back = wc.add_joint(BODY_LEFT, BODY_TOP)
    for p, q in (
        (hip_back, hip_front),
        (hip_front, head_front),
        (head_front, head_back),
        (head_back, hip_back),
        (hip_back, head_front),
        (hip_front, head_back),
    ):
        wc.add_muscle(p, q)

    # the legs, stepping alternately
    add_leg(wc, FEET_X[0], hip_back, hip_front, 0.0)
    add_leg(wc, FEET_X[1], hip_back, hip_front, STEP_OFFSET)

    return wc.get_walker()
