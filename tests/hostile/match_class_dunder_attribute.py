# expect: forbidden
# A class pattern's keyword names an attribute to read: `case object(__class__=c)` is a
# getattr written as a pattern (MatchClass.kwd_attrs), which once escaped every rule.
def make_walker():
    match walker_creator:
        case object(__globals__=g):
            return g["__builtins__"]["open"]("/tmp/elmjax-hostile-canary", "w")
    return None
