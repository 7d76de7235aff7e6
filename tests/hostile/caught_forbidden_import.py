# expect: forbidden
# the refused import is caught, but the attempt alone is enough
try:
    import os
except ImportError:
    os = None


def make_walker():
    wc = walker_creator()
    wc.add_muscle(wc.add_joint(0, 0), wc.add_joint(5, 0))
    return wc.get_walker()
