# expect: exception
# singledispatch().register evaluates string annotations: eval of a string the program wrote.
import functools


@functools.singledispatch
def handle(x):
    return x


def make_walker():
    def sneaky(x: "print(1) or int"):
        return x

    handle.register(sneaky)
    return handle(1)
