# expect: forbidden
import socket


def make_walker():
    socket.create_connection(("example.com", 80))
