# expect: forbidden
def make_walker():
    name = "__cla" + "ss__"
    return getattr(getattr(1, name), "__ba" + "se__")
