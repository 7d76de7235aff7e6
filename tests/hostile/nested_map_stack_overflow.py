# expect: crashed
# Iterators nested 300,000 deep: `next` recurses in C, past the thread's stack, where no
# RecursionError guards it. The program's process dies of SIGSEGV; only it is lost.
def make_walker():
    it = iter([1.0])
    for _ in range(300_000):
        it = map(abs, it)
    return next(it)
