# expect: forbidden
import os


def make_walker():
    os.system("touch /tmp/elmjax-hostile-canary")
