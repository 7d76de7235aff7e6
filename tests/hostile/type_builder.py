# expect: forbidden
def make_walker():
    evil = type("Evil", (), {"__del__": lambda self: None})
    return evil()
