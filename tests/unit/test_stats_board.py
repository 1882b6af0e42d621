"""The listener's StatsBoard (shared memory its parent reads after a kill), written by a
child process: the layout travels with the board, so a listener that imports a newer mplog
(a spawn child of a program whose mplog was upgraded on disk while it ran) writes the
layout its parent reads. A fork child stands in for the spawn child here (its module is
the restored one, with every key), without spawn's resource-tracker process."""

from __future__ import annotations

import time

import multiprocess as mp
import pytest

from mplog import _listener


def _publish(board: _listener.StatsBoard, value: int) -> None:
    # The child's BOARD_KEYS are the module's, whatever they were when the board was made.
    stats = {key: value + i for i, key in enumerate(_listener.BOARD_KEYS)}
    board.publish(stats, time.monotonic_ns(), writer=0)


def _roundtrip(board: _listener.StatsBoard, value: int) -> None:
    proc = mp.get_context("fork").Process(target=_publish, args=(board, value))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0


def test_a_board_read_back_from_a_spawn_child() -> None:
    board = _listener.StatsBoard(mp.get_context("fork"))
    assert board.read() is None
    _roundtrip(board, 100)
    assert board.read() == {key: 100 + i for i, key in enumerate(_listener.BOARD_KEYS)}
    board.clear()
    assert board.read() is None


def test_a_parent_with_fewer_keys_reads_what_a_newer_listener_wrote(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parent made its board with one key fewer (an older mplog); the child's code has
    them all. It writes the parent's keys, at the parent's offsets; before, it wrote its
    own layout and the parent's read raised IndexError at stop()."""
    older = _listener.BOARD_KEYS[:-1]
    monkeypatch.setattr(_listener, "BOARD_KEYS", older)
    board = _listener.StatsBoard(mp.get_context("fork"))
    monkeypatch.undo()
    _roundtrip(board, 7)
    full = {key: 7 + i for i, key in enumerate(_listener.BOARD_KEYS)}
    assert board.read() == {key: full[key] for key in older}
