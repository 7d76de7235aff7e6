# expect: exception
def make_walker():
    return 1 / 0
