# expect: exception
# update_wrapper copies attributes named by strings: assigned=("__globals__",) would hand the
# wrapper's globals to any object. The program's functools does not have it.
import functools


def make_walker():
    class Holder:
        pass

    holder = Holder()
    functools.update_wrapper(holder, walker_creator, assigned=("__globals__",), updated=())
    return holder.globals_copy
