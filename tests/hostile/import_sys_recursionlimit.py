# expect: forbidden
import sys

sys.setrecursionlimit(10**9)


def make_walker():
    return make_walker()
