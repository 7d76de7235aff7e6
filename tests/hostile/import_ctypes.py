# expect: forbidden
from ctypes import CDLL


def make_walker():
    CDLL(None).system(b"touch /tmp/elmjax-hostile-canary")
