# expect: timeout
# Catches every RecursionError and recurses again, forever.
def down(n):
    try:
        return down(n + 1)
    except RecursionError:
        return down(n + 1)


def make_walker():
    while True:
        down(0)
