# expect: timeout
def make_walker():
    while True:
        pass
