# expect: forbidden
# socket was hidden from sys.modules only; multiprocessing.connection still holds it.
import multiprocessing.connection


def make_walker():
    s = multiprocessing.connection.socket.socket()
    s.connect(("127.0.0.1", 9))
    return s
