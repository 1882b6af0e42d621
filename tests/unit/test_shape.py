"""Guards that keep the package's shape."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import mplog

SANS_IO = ["_framing.py", "_record.py", "_backoff.py", "_buffer.py", "_errors.py", "_text.py", "_spoolfmt.py",
           "_wires/__init__.py", "_wires/mplog.py", "_wires/relp.py", "_wires/syslog.py", "_wires/jsonl.py"]
FORBIDDEN = {"socket", "select", "selectors", "threading", "time", "os", "multiprocessing", "multiprocess"}


def test_sans_io_modules_import_no_io() -> None:
    pkg = pathlib.Path(mplog.__file__).parent
    for name in SANS_IO:
        tree = ast.parse((pkg / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module.split(".")[0]]
            else:
                continue
            assert not FORBIDDEN & set(mods), f"{name} imports {mods}"


def test_import_changes_nothing() -> None:
    code = (
        "import logging, os, threading, sys\n"
        "before = (list(logging.getLogger().handlers), threading.active_count(), dict(os.environ))\n"
        "import mplog\n"
        "after = (list(logging.getLogger().handlers), threading.active_count(), dict(os.environ))\n"
        "sys.exit(0 if before == after else 1)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_public_names() -> None:
    for name in ["start", "worker_init", "Pipeline", "QueueHandler", "QueueListener", "SocketHandler",
                 "ENV_ADDRESS", "MplogError", "ConfigError", "ProtocolError"]:
        assert hasattr(mplog, name), name
    assert mplog.ENV_ADDRESS == "MPLOG_ADDRESS"
    assert issubclass(mplog.ConfigError, ValueError) and issubclass(mplog.ConfigError, mplog.MplogError)
    assert issubclass(mplog.ProtocolError, mplog.MplogError)
    import logging.handlers as lh
    assert issubclass(mplog.QueueHandler, lh.QueueHandler)
    assert issubclass(mplog.QueueListener, lh.QueueListener)
    assert issubclass(mplog.SocketHandler, lh.SocketHandler)
    h = mplog.SocketHandler("localhost", 9020)
    assert (h.retryStart, h.retryFactor, h.retryMax) == (1.0, 2.0, 30.0)
    h.close()


def test_cli_help_and_bad_usage() -> None:
    ok = subprocess.run([sys.executable, "-m", "mplog", "--help"], capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and "demo" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "mplog", "nonsense"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
