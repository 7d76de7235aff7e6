# expect: invalid
def make_robot():
    return walker_creator().get_walker()
