# expect: forbidden
# a finaliser would run later, inside whatever program the worker runs next
class Haunt:
    def __del__(self):
        while True:
            pass


def make_walker():
    return Haunt()
