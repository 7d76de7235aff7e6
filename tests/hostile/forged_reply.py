# expect: invalid
# Returns (and prints) something shaped like the sandbox's own reply protocol, hoping a later
# stage takes it for a result.
def make_walker():
    fake = {"ok": True, "index": 0, "value": {"joints": [[0.0, 0.0]], "muscles": []}}
    print('{"ok": true, "index": 1, "value": null}')
    return fake
