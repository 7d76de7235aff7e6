# expect: invalid
def make_walker():
    wc = walker_creator()
    a = wc.add_joint(0.0, 0.0)
    wc.add_joint(5.0, 0.0)
    wc.add_muscle(a, 7)
    return wc.get_walker()
