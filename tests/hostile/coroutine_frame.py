# expect: forbidden
# A coroutine's frame, then its globals: the real builtins of the module that defined it.
async def step():
    return 1


def make_walker():
    coro = step()
    return coro.cr_frame.f_globals
