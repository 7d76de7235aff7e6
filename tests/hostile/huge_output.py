# expect: invalid
def make_walker():
    while True:
        print("x" * 100000)
