# expect: memory
def make_walker():
    hoard = []
    while True:
        hoard.append(bytearray(10**7))
