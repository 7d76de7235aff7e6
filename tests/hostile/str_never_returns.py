# expect: exception
class Stubborn(Exception):
    def __str__(self):
        while True:
            pass


def make_walker():
    raise Stubborn()
