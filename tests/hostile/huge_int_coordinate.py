# expect: invalid
# An integer too large for a float, where a coordinate goes.
def make_walker():
    wc = walker_creator()
    a = wc.add_joint(10**400, 0)
    b = wc.add_joint(1, 0)
    wc.add_muscle(a, b)
    return wc.get_walker()
