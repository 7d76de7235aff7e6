# expect: forbidden
import subprocess


def make_walker():
    subprocess.run(["touch", "/tmp/elmjax-hostile-canary"])
