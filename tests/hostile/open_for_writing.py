# expect: forbidden
def make_walker():
    with open("/tmp/elmjax-hostile-canary", "w") as f:
        f.write("pwned")
