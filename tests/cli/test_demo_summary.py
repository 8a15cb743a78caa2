"""The demo's summary: compile time is never reported as throughput."""

from coaddx.cli.demo import throughput_rows


def test_throughput_excludes_the_seconds_spent_compiling():
    # 16 Mpix-visits in a 10 s stage of which 8 s were compiling: 8 Mpix-visits/s, not 1.6
    rows = dict(throughput_rows(16_000_000, 10.0, 2.0))
    assert rows["throughput"].startswith("2 Mpix-visits/s")
    rows = dict(throughput_rows(16_000_000, 10.0, 8.0))
    assert rows["throughput"].startswith("8 Mpix-visits/s")
    assert dict(throughput_rows(16_000_000, 2.0, 0.0))["throughput"].startswith("8 Mpix")


def test_no_throughput_when_the_stage_was_mostly_compiling_or_unmeasured():
    assert "not measured" in dict(throughput_rows(16_000_000, 10.0, 9.5))["throughput"]
    assert "not measured" in dict(throughput_rows(16_000_000, 10.0, 0.0, unseen=True))["throughput"]
