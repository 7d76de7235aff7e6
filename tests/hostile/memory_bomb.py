# expect: memory
def make_walker():
    return [0] * (10**10)
