# expect: timeout
# a loop inside C code never returns to the interpreter, so no signal handler runs:
# only the caller's wall-clock limit (kill and replace the worker) stops it
def make_walker():
    return sum(range(10**18))
