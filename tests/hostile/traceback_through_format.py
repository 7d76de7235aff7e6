# expect: forbidden
# The same chain, with the attribute names hidden in a format string built at run time.
def make_walker():
    try:
        1 / 0
    except ZeroDivisionError as e:
        field = "{0." + "_" * 2 + "traceback" + "_" * 2 + ".tb_frame}"
        return field.format(e)
