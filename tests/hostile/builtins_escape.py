# expect: forbidden
def make_walker():
    __builtins__["open"]("/tmp/elmjax-hostile-canary", "w")
