# expect: forbidden
# From a caught exception back through its traceback to a frame of the sandbox itself.
def make_walker():
    try:
        1 / 0
    except ZeroDivisionError as e:
        tb = e.__traceback__
        return tb.tb_frame.f_back.f_globals
