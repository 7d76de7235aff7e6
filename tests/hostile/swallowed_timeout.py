# expect: timeout
# catches whatever the CPU timer raises and keeps spinning
def make_walker():
    while True:
        try:
            while True:
                pass
        except:
            pass
