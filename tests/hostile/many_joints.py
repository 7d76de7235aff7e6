# expect: invalid
def make_walker():
    wc = walker_creator()
    for k in range(100000):
        wc.add_joint(k % 100, k // 100)
    return wc.get_walker()
