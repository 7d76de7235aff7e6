# expect: crashed
# Iterators nested a million deep: `next` recurses in C, past the thread's stack, where no
# RecursionError guards it. The program's process dies of SIGSEGV; only it is lost.
def make_walker():
    it = iter([1.0])
    for _ in range(1_000_000):
        it = map(abs, it)
    return next(it)
