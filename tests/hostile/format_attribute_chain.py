# expect: forbidden
# str.format follows attribute chains written in the (run-time) format string: here to the
# wrapper's globals and on to the real builtins.
def make_walker():
    spec = "{0." + "_" + "_globals_" + "_}"
    return spec.format(walker_creator)
