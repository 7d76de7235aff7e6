# expect: forbidden
# A class keyword other than metaclass= (it goes to __init_subclass__); no suspicious word in
# the text, so only the full check can see it.
class Base:
    pass


class Child(Base, flag=1):
    pass


def make_walker():
    return Child()
