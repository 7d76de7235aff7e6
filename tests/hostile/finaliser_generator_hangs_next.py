# expect: timeout
# A suspended generator in a reference cycle, whose `finally` spins forever: the garbage
# collector would run it later, inside the next program. The sandbox collects a program's
# garbage on the program's own clock (so this is its timeout), and a program's process that ran
# anything suspicious is never reused: the next program never meets it.
def spin():
    try:
        yield 1
    finally:
        while True:
            pass


def make_walker():
    holder = []
    gen = spin()
    next(gen)
    holder.append(gen)
    holder.append(holder)
    raise RuntimeError("left a trap behind")
