# expect: forbidden
def make_walker():
    __import__("os").system("touch /tmp/elmjax-hostile-canary")
