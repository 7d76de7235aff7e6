# expect: invalid
# A walker-like object whose pickle hook is renamed at run time: the reply is never pickled,
# and `check_walker` takes only a genuine Walker.
class Impostor:
    def reduce(self, protocol):
        return (print, ("unpickled in the caller!",))


def make_walker():
    return Impostor()
