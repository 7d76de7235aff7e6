# expect: invalid
# An object whose __len__ lies, returned where a walker belongs.
class Liar:
    def __len__(self):
        return -1

    def __iter__(self):
        return iter([])


def make_walker():
    return Liar()
