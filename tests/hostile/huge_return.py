# expect: invalid
def make_walker():
    return "x" * (50 * 1024 * 1024)
