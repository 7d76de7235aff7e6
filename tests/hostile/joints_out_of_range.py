# expect: invalid
def make_walker():
    wc = walker_creator()
    a = wc.add_joint(0.0, 0.0)
    b = wc.add_joint(1e6, 0.0)
    wc.add_muscle(a, b)
    return wc.get_walker()
