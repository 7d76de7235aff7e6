# expect: forbidden
# Binding a forbidden name (then calling whatever it holds) is refused like mentioning it.
def make_walker():
    try:
        raise ValueError("x")
    except ValueError as open:
        return open
