"""mplog._sigpipe in a process that put SIGPIPE's default back (a child process: there a
mistake kills the child, not the test run)."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT, env_with_root

CHILD = r"""
import os, signal, socket, threading
from mplog import _sigpipe

signal.signal(signal.SIGPIPE, signal.SIG_DFL)
assert not _sigpipe.ignored()
r, w = os.pipe()
os.close(r)
before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
with _sigpipe.no_sigpipe():
    try:
        os.write(w, b"x")
    except BrokenPipeError:
        print("EPIPE")
assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == before  # the mask is restored
assert signal.SIGPIPE not in signal.sigpending()  # the one the write raised was taken

a, b = socket.socketpair()
b.close()
try:
    _sigpipe.send_all(a, b"x" * 100000)
except BrokenPipeError:
    print("EPIPE")

def own_thread():
    _sigpipe.block_in_this_thread()
    try:
        os.write(w, b"x")
    except BrokenPipeError:
        print("EPIPE")
t = threading.Thread(target=own_thread)
t.start()
t.join()
assert signal.SIGPIPE not in signal.pthread_sigmask(signal.SIG_BLOCK, set())  # only that thread

signal.signal(signal.SIGPIPE, signal.SIG_IGN)
assert _sigpipe.ignored()
with _sigpipe.no_sigpipe():  # nothing to do: Python's default
    try:
        os.write(w, b"x")
    except BrokenPipeError:
        print("EPIPE")
print("alive")
"""


def test_writes_to_a_closed_peer_fail_with_epipe_instead_of_killing_the_process() -> None:
    run = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         env=env_with_root(), cwd=ROOT, timeout=60, check=False)
    assert run.returncode == 0, (run.returncode, run.stderr)
    assert run.stdout.splitlines() == ["EPIPE"] * 4 + ["alive"], run.stdout
