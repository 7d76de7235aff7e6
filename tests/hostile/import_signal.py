# expect: forbidden
# Ignore the CPU timer's signal, then spin.
import signal

signal.signal(signal.SIGPROF, signal.SIG_IGN)


def make_walker():
    while True:
        pass
