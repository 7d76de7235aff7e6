# expect: syntax
def make_walker(:
    return None
