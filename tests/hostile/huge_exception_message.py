# expect: exception
# A 64 MB exception message: the message that comes back is bounded.
def make_walker():
    raise ValueError("x" * (64 * 1024 * 1024))
