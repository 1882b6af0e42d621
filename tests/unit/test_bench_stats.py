"""The bench's arithmetic: medians over rounds, paired ratios, failures never averaged."""

from __future__ import annotations

from mplog._bench import (
    TIMES,
    BenchConfig,
    CollectorResult,
    Result,
    collector_ratio_rows,
    combine,
    paired_ratios,
)


def _r(setup: str, rnd: int, rate: float | None, worker: float, error: str | None = None) -> Result:
    return Result(setup, 4, 100, rate=rate, worker_us=worker, total_us=worker, round=rnd,
                  rss_mib=10.0 + rnd, connections=1, error=error)


def test_combine_takes_medians_the_largest_rss_and_keeps_a_failure() -> None:
    cfg = BenchConfig.make(sizes=[4], rounds=3)
    rounds = [_r("mplog", 0, 10.0, 5.0), _r("mplog", 1, 30.0, 1.0), _r("mplog", 2, 20.0, 3.0),
              _r("cookbook", 0, 1.0, 1.0), _r("cookbook", 1, 1.0, 1.0, error="boom"),
              _r("cookbook", 2, 1.0, 1.0)]
    by = {r.setup: r for r in combine(rounds, cfg)}
    assert (by["mplog"].rate, by["mplog"].worker_us, by["mplog"].rss_mib) == (20.0, 3.0, 12.0)
    assert by["cookbook"].error == "boom (round 2)" and by["cookbook"].rate is None


def test_ratios_are_paired_within_rounds() -> None:
    # A slow spell in round 1 halves both setups: the paired ratio does not move.
    rounds = [_r("mplog", 0, 20.0, 1.0), _r("per-proc", 0, 10.0, 1.0),
              _r("mplog", 1, 10.0, 1.0), _r("per-proc", 1, 5.0, 1.0),
              _r("mplog", 2, 30.0, 1.0), _r("per-proc", 2, 1.0, 1.0, error="x")]
    assert paired_ratios(rounds, "mplog", "per-proc", "rate") == [2.0, 2.0]


def test_collector_ratio_rows_pair_runs_and_say_what_is_missing() -> None:
    rs = CollectorResult("rsyslog", "syslog", "rsyslog", rates=[100.0, 50.0])
    serve = CollectorResult("mplog serve", "mplog, HMAC off", "serve", rates=[120.0, 60.0])
    slow = CollectorResult("mplog serve", "pickle", "serve-pickle", rates=[10.0, 10.0])
    rows = collector_ratio_rows([rs, serve, slow])
    assert rows[0] == (f"| mplog serve / rsyslog, mplog, HMAC off | ≥ 1.0{TIMES} "
                       f"| 1.20{TIMES} (1.20-1.20) | met |")
    assert rows[1].endswith(f"| 0.15{TIMES} (0.10-0.20) | **missed** |")
    assert collector_ratio_rows([serve])[0].endswith("| - | not measured: rsyslog not measured |")
