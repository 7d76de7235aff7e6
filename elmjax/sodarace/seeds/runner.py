# Runner: a long, low rigid body on four legs that step in a trot: each leg is half a cycle
# from its neighbours, so two feet push while the other two swing forward. Each foot hangs
# from the two hips above it by two muscles a quarter cycle apart, so it travels round a
# loop (down, back, up, forward) instead of swinging to and fro.

NUM_LEGS = 4
HIP_SPACING = 5.0  # distance between neighbouring hips (one leg between each pair)
BODY_HEIGHT = 3.0
LEG_LENGTH = 4.0  # height of the body's underside above the feet (the feet stand at y = 0)
AMPLITUDE = 10.0  # leg muscle strength
STEP_OFFSET = 0.5  # phase lag of each leg behind the one before it (cycles)
LOOP_OFFSET = 0.25  # phase lag between a leg's two muscles (makes the foot loop)


def make_walker():
    wc = walker_creator()

    # the body: a row of boxes, each braced by its four sides and both diagonals
    hips = [wc.add_joint(k * HIP_SPACING, LEG_LENGTH) for k in range(NUM_LEGS + 1)]
    back = [wc.add_joint(k * HIP_SPACING, LEG_LENGTH + BODY_HEIGHT) for k in range(NUM_LEGS + 1)]
    for k in range(NUM_LEGS):
        a, b, c, d = hips[k], hips[k + 1], back[k + 1], back[k]
        for p, q in ((a, b), (b, c), (c, d), (d, a), (a, c), (b, d)):
            wc.add_muscle(p, q)

    # the legs: a foot between each pair of hips, hung from both by phased muscles
    for k in range(NUM_LEGS):
        foot = wc.add_joint((k + 0.5) * HIP_SPACING, 0.0)
        phase = (k * STEP_OFFSET) % 1.0
        wc.add_muscle(hips[k], foot, AMPLITUDE, phase)
        wc.add_muscle(hips[k + 1], foot, AMPLITUDE, (phase + LOOP_OFFSET) % 1.0)

    return wc.get_walker()
