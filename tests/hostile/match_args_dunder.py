# expect: forbidden
# Positional class patterns read the attributes named by the class's __match_args__.
class Probe:
    __match_args__ = ("__globals__",)


def make_walker():
    match walker_creator:
        case Probe(g):
            return g
    return None
