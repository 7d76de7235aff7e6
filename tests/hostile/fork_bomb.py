# expect: forbidden
import os


def make_walker():
    while True:
        os.fork()
