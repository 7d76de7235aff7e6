# expect: exception
# Converting a 100,000-digit string to int (quadratic in C) is refused outright.
def make_walker():
    return int("9" * 100_000)
