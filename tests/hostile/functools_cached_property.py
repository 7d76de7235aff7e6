# expect: exception
# cached_property stores under `attrname`, a string the program controls.
import functools


class Sneaky:
    @functools.cached_property
    def value(self):
        return 1


def make_walker():
    return Sneaky().value
