# expect: forbidden
# A reply that would run code when the caller unpickles it.
import pickle


class Payload:
    def __reduce_ex__(self, protocol):
        return (print, ("unpickled in the caller!",))


def make_walker():
    return pickle.dumps(Payload())
