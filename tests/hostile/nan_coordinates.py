# expect: invalid
def make_walker():
    wc = walker_creator()
    a = wc.add_joint(0.0, 0.0)
    b = wc.add_joint(float("nan"), 1.0)
    wc.add_muscle(a, b)
    return wc.get_walker()
