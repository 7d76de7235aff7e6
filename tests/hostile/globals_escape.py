# expect: forbidden
def make_walker():
    real = make_walker.__globals__["__builtins__"]
    real["open"]("/tmp/elmjax-hostile-canary", "w")
