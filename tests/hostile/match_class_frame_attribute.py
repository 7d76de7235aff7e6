# expect: forbidden
# The frame of a suspended generator, read through a class pattern, leads to the real builtins.
def make_walker():
    gen = (x for x in [1])
    match gen:
        case object(gi_frame=frame):
            return frame
    return None
