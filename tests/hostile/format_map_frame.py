# expect: forbidden
# format_map with a generator's frame in an attribute chain.
def make_walker():
    gen = (x for x in [1])
    return "{g.gi_frame.f_back}".format_map({"g": gen})
