# expect: exception
def down(n):
    return down(n + 1) + 1


def make_walker():
    return down(0)
