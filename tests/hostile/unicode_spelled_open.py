# expect: forbidden
# fullwidth letters: Python normalises this identifier (NFKC) to `open`
def make_walker():
    ｏｐｅｎ("/tmp/elmjax-hostile-canary", "w").write("pwned")
