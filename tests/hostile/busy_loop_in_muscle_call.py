# expect: timeout
def spin():
    x = 0
    while True:
        x += 1
    return x


def make_walker():
    wc = walker_creator()
    a = wc.add_joint(0, 0)
    b = wc.add_joint(10, 0)
    wc.add_muscle(a, b, spin(), 0.0)
    return wc.get_walker()
