"""IO: the listener names itself, so ``ps``, ``top`` and ``htop`` say what it is.

- The kernel's name (``comm``, what ``top``, ``pgrep`` and ``psutil.Process.name()`` show;
  15 bytes) is set with ``prctl(PR_SET_NAME)``: ``mplog-listener``.
- If the optional ``setproctitle`` package is installed (``pip install 'mplog[proctitle]'``),
  the full command line (what ``ps -f`` shows) becomes
  ``mplog: listener for <program> (pid N)``, *program* being the basename of the parent's
  ``sys.argv[0]`` (``spawn`` and ``forkserver`` hand it to the child) and *N* its pid.

Neither is essential: a failure is reported on stderr once and the listener runs on.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys

from ._stderr import say

__all__ = ["COMM", "listener_title", "set_listener_title"]

#: The kernel name of a listener process (TASK_COMM_LEN is 16 bytes with the NUL).
COMM = "mplog-listener"
_PR_SET_NAME = 15


def listener_title(argv0: str, parent_pid: int) -> str:
    """The full title of the listener of the program *argv0* running as *parent_pid*."""
    program = os.path.basename(argv0) or "python"
    if program == "-c":
        program = "python -c"
    elif program == "__main__.py":  # python -m package: name the package
        program = os.path.basename(os.path.dirname(argv0)) or program
    return f"mplog: listener for {program} (pid {parent_pid})"


def set_listener_title(parent_pid: int) -> None:
    """Name this process (the listener of *parent_pid*); see the module docstring."""
    title = listener_title(sys.argv[0] if sys.argv else "", parent_pid)
    if importlib.util.find_spec("setproctitle") is not None:
        import setproctitle

        # setproctitle also sets comm (to the title cut at 15 bytes); prctl below fixes it.
        setproctitle.setproctitle(title)
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_NAME, COMM.encode("ascii"), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as exc:
        say(f"mplog listener: cannot set the process name ({exc})")
