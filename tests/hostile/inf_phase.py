# expect: invalid
def make_walker():
    wc = walker_creator()
    a = wc.add_joint(0, 0)
    b = wc.add_joint(1, 0)
    c = wc.add_joint(0, 1)
    wc.add_muscle(a, b)
    wc.add_muscle(b, c)
    wc.add_muscle(a, c, 1.0, float("inf"))
    return wc.get_walker()
