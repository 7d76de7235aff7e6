# expect: forbidden
def make_walker():
    for cls in ().__class__.__base__.__subclasses__():
        if cls.__name__ == "Popen":
            cls(["touch", "/tmp/elmjax-hostile-canary"])
