# expect: forbidden
class Payload:
    def __reduce__(self):
        return (print, ("unpickled in the caller!",))


def make_walker():
    return Payload()
