# expect: forbidden
# A thread that would outlive the program and answer for the next one.
import threading


def make_walker():
    threading.Thread(target=lambda: None).start()
