# expect: invalid
# Coordinates of a float subclass whose comparisons lie: the walker must be rebuilt from plain
# floats or refused, never passed through.
class Shifty(float):
    def __lt__(self, other):
        return True

    def __gt__(self, other):
        return False

    def __eq__(self, other):
        return True

    def __hash__(self):
        return 0


def make_walker():
    wc = walker_creator()
    a = wc.add_joint(Shifty(1e308), Shifty(-1e308))
    b = wc.add_joint(Shifty(float("nan")), 0)
    wc.add_muscle(a, b)
    return wc.get_walker()
