# expect: invalid
# A walker whose every number is in range except one amplitude, spelled as a string.
def make_walker():
    wc = walker_creator()
    a = wc.add_joint(0, 0)
    b = wc.add_joint(1, 0)
    c = wc.add_joint(0, 1)
    wc.add_muscle(a, b)
    wc.add_muscle(b, c)
    wc.add_muscle(a, c, float("nan"), 0.0)
    return wc.get_walker()
