# expect: forbidden
async def ticks():
    yield 1


def make_walker():
    return ticks().ag_frame.f_builtins
