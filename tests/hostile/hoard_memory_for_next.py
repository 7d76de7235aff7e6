# expect: exception
# Hoards most of the memory limit in a reference cycle and fails: a worker that ran the next
# program in the same heap would start it with the hoard still there.
def make_walker():
    hoard = [bytearray(150 * 1024 * 1024)]
    hoard.append(hoard)
    raise RuntimeError("hoarded")
