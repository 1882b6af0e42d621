"""The worker's encoder, per record shape: mplog's fast paths against its general path and
against what the format-and-drop floor does with the same record (``Formatter.format``).
One process, no I/O; side by side, interleaved in short batches.

    python benchmarks/bench_encode.py [--batches 300] [--per 300]

Shapes: a plain record; the same record after another handler formatted it (a console
handler before mplog's on the root logger leaves ``message`` and ``asctime`` on it); a
record with three ``extra=`` fields (a request id, a user id, a flag); both. For each, the
p10 and the median of the batches' µs per call, for:

- ``pickle``: ``encode_pickle``, the stdlib-wire frame a relaying listener forwards;
- ``general``: ``_encode_pickle_slow``, the same frame the general way (encode, decode,
  pickle): what every formatted record and every record with extras cost before;
- ``json``: ``encode``, the ``b"R"`` frame of a listener that decodes;
- ``format``: ``logging.Formatter.format`` with the floor's format string.

This is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mplog import _record

FMT = "%(asctime)s %(levelname)s %(name)s %(message)s"
MESSAGE = "request %d handled in %.3f ms"


def _shapes() -> dict[str, logging.LogRecord]:
    logger = logging.getLogger("bench")

    def make(extra: dict[str, object] | None = None, formatted: bool = False) -> logging.LogRecord:
        r = logger.makeRecord("bench", logging.INFO, "/srv/app/handlers.py", 42, MESSAGE,
                              (7, 1.25), None, "handle", extra)
        if formatted:
            logging.Formatter(FMT).format(r)
        return r

    extra = {"request_id": "4f1c2a9e", "user_id": 1234, "cached": True}
    return {"plain": make(), "formatted": make(formatted=True), "extras": make(extra),
            "formatted+extras": make(extra, formatted=True)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--per", type=int, default=300, help="calls per batch")
    args = ap.parse_args(argv)
    fmt = logging.Formatter(FMT)
    coders: dict[str, Callable[[logging.LogRecord], object]] = {
        "pickle": _record.encode_pickle, "general": _record._encode_pickle_slow,
        "json": _record.encode, "format": fmt.format}
    shapes = _shapes()
    got: dict[tuple[str, str], list[float]] = {(s, c): [] for s in shapes for c in coders}
    per = args.per
    for _ in range(args.batches):
        for s, shape in shapes.items():
            for c, fn in coders.items():
                # format() adds message/asctime: it formats a copy
                rec = logging.makeLogRecord(dict(shape.__dict__)) if c == "format" else shape
                t = time.process_time()
                for _ in range(per):
                    fn(rec)
                got[s, c].append((time.process_time() - t) / per * 1e6)
    print(f"{args.batches} batches x {per} calls; µs per call, p10 / median:")
    print(f"  {'shape':17s}" + "".join(f"{c:>16s}" for c in coders) + "   pickle/format")
    for s in shapes:
        cells, med = [], {}
        for c in coders:
            v = sorted(got[s, c])
            med[c] = statistics.median(v)
            cells.append(f"{v[len(v) // 10]:7.2f} / {med[c]:5.2f}")
        print(f"  {s:17s}" + "".join(f"{x:>16s}" for x in cells)
              + f"   {med['pickle'] / med['format']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
