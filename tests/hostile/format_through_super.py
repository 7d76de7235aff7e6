# expect: forbidden
# A str subclass reaching str.format through super().
class Text(str):
    def render(self, obj):
        return super().format(obj)


def make_walker():
    return Text("{0._" + "_class_" + "_._" + "_base_" + "_}").render(1)
