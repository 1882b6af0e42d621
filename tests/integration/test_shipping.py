"""Handlers shipped to the listener: a factory that uses a package dill would otherwise
copy by value (mplog itself, installed editable here); and a forked child of the process
that owns a pipeline exits without tripping over the inherited listener."""

from __future__ import annotations

import logging
import subprocess
import sys

import mplog
from tests.helpers import ROOT, Receiver, env_with_root


def test_lambda_factory_using_an_uninstalled_package(receiver: Receiver, start_pipeline) -> None:
    port = receiver.port
    start_pipeline(lambda: [mplog.SocketHandler("127.0.0.1", port)])  # closes over port
    logging.getLogger("ship").warning("via a lambda")
    assert receiver.wait_records(1, 20, where=lambda r: r["name"] == "ship")[0]["msg"] == "via a lambda"


FORK = """
import logging, os, sys
import mplog

if __name__ == "__main__":
    with mplog.start([logging.NullHandler()]):
        pid = os.fork()
        if pid == 0:
            logging.getLogger("child").warning("from the fork")
            sys.exit(0)  # runs the exit handlers multiprocess registered in the parent
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
"""


def test_forked_child_exits_cleanly() -> None:
    run = subprocess.run([sys.executable, "-c", FORK], cwd=ROOT, env=env_with_root(),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "0"
    assert run.stderr == "", run.stderr
