# expect: invalid
def make_walker():
    wc = walker_creator()
    a = wc.add_joint(0.0, 0.0)
    b = wc.add_joint(1.0, float("inf"))
    wc.add_muscle(a, b)
    return wc.get_walker()
