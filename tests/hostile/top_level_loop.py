# expect: timeout
n = 0
while True:
    n += 1


def make_walker():
    return None
