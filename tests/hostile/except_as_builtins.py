# expect: forbidden
# An `except ... as NAME` binds a name no other rule used to check.
def make_walker():
    try:
        raise ValueError("x")
    except ValueError as __builtins__:
        return walker_creator().get_walker()
