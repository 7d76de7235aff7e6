# expect: forbidden
# str.format reached through the type, not an instance.
def make_walker():
    f = str.format
    return f("{0._" + "_class_" + "_}", 1)
