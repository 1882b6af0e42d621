"""mplog._ship.release: the shipping process's copy of a handler gives back its file and
socket, and still works if this process uses it."""

from __future__ import annotations

import logging
import logging.handlers
import pathlib
import socket
import threading

import mplog._ship as ship


def _record(msg: str) -> logging.LogRecord:
    return logging.LogRecord("app", logging.WARNING, __file__, 1, msg, None, None)


def test_a_released_file_handler_closes_its_file_and_reopens_on_use(tmp_path: pathlib.Path) -> None:
    h = logging.FileHandler(tmp_path / "a.log")
    stream = h.stream
    ship.release(h)
    assert h.stream is None and stream.closed
    h.handle(_record("after"))  # opened again, like delay=True
    h.close()
    assert (tmp_path / "a.log").read_text() == "after\n"


def test_a_released_syslog_handler_makes_its_socket_again(tmp_path: pathlib.Path) -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(5)
    h = logging.handlers.SysLogHandler(udp.getsockname())
    old = h.socket
    try:
        ship.release(h)
        assert h.socket is None and old.fileno() == -1
        h.handle(_record("again"))
        assert udp.recv(1024).endswith(b"again\x00")
    finally:
        h.close()
        udp.close()


def test_release_leaves_a_handler_another_thread_is_inside(tmp_path: pathlib.Path, monkeypatch) -> None:
    monkeypatch.setattr(ship, "LOCK_WAIT", 0.05)
    h = logging.FileHandler(tmp_path / "a.log")
    inside, done = threading.Event(), threading.Event()

    def hold() -> None:
        with h.lock:
            inside.set()
            done.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert inside.wait(10)
        ship.release(h)  # returns after LOCK_WAIT, without closing under that thread
        assert h.stream is not None and not h.stream.closed
    finally:
        done.set()
        t.join(10)
        h.close()
