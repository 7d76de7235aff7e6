# expect: invalid
# Joint handles forged from a class of its own, with equality that claims to be anything.
class Anything:
    def __eq__(self, other):
        return True

    def __hash__(self):
        return 0


def make_walker():
    wc = walker_creator()
    wc.add_joint(0, 0)
    wc.add_joint(1, 0)
    wc.add_muscle(Anything(), Anything())
    return wc.get_walker()
