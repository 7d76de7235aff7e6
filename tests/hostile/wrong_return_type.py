# expect: invalid
def make_walker():
    wc = walker_creator()
    a = wc.add_joint(0.0, 0.0)
    b = wc.add_joint(5.0, 0.0)
    wc.add_muscle(a, b)
    return {"joints": [[0, 0], [5, 0]], "muscles": [[0, 1, {"type": "distance"}]]}
