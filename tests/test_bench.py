"""The benchmark's bookkeeping, without a GPU: stand-in timers and records.

bench.sweep times forward, backward and add-forward once, and measures again a cell of ours more than
OFF_CELL_POINTS below the best of its row; bench.report says so under the table, marks the cells the
host bounds, and puts the host time of a forward+backward (bench.latency) beside the latency table.
bench.host_breakdown's training cases run. bench.timing's own tests are in test_bench_timing.py.
"""

from __future__ import annotations

import pytest
import torch

from bench import host_breakdown, latency
from bench.cases import FORWARD, FORWARD_BACKWARD, HOST_BOUND_FRACTION, OFF_CELL_POINTS, OFF_CELL_REPEATS
from bench.report import (
    _host_bound_note, _latency_paired_note, _latency_spread_note, _latency_table, _repeats_note, _throughput_table,
)
from bench.sweep import _set_times, repeat_off_cells
from bench.timing import CallTime
from tests.conftest import DEVICE, ON_GPU

CEILING_GBPS = 1000.0
BYTES = 1e9  # with the ceiling above: a reading of ms milliseconds is 100 / ms percent of it
HOST_SHARE = 0.25  # the stand-in timings' host ms a call, as a share of their GPU ms: not host-bound


class Timer:
    """A timing function that returns the next of `readings` (GPU ms, issued in HOST_SHARE of that)
    each call, or raises `error`."""

    def __init__(self, *readings: float, error: Exception | None = None) -> None:
        self.readings = list(readings)
        self.error = error
        self.calls = 0

    def __call__(self) -> list[CallTime]:
        self.calls += 1
        if self.error is not None:
            raise self.error
        ms = self.readings.pop(0)
        return [CallTime(ms, HOST_SHARE * ms)]


def _record(impl: str, group: str, *readings_ms: float, mode: str = FORWARD, n: int = 4096) -> dict:
    record = {"impl": impl, "group": group, "mode": mode, "n": n, "bytes": BYTES, "status": "ok"}
    _set_times(record, [CallTime(ms, HOST_SHARE * ms) for ms in readings_ms], CEILING_GBPS)
    return record


def test_an_off_cell_of_ours_is_measured_again_and_reports_the_median():
    peer, ours = _record("quack", "peers", 1.0), _record("ours-cuda", "ours", 1.25)  # 100%, 80%
    timers = [Timer(), Timer(1.05, 1.0)]
    repeat_off_cells([peer, ours], timers, CEILING_GBPS)
    assert timers[0].calls == 0
    assert timers[1].calls == OFF_CELL_REPEATS - 1
    assert ours["ms_repeats"] == [1.25, 1.05, 1.0]
    assert ours["ms"] == 1.05
    assert ours["pct_of_ceiling"] == pytest.approx(100 / 1.05)
    assert ours["pct_repeats"] == pytest.approx([80.0, 100 / 1.05, 100.0])
    assert ours["stable"] is False  # the first reading is 15 points under the median
    assert ours["host_ms_repeats"] == pytest.approx([HOST_SHARE * ms for ms in (1.25, 1.05, 1.0)])
    assert ours["host_ms"] == pytest.approx(HOST_SHARE * 1.05) and ours["host_bound"] is False


def test_cells_within_reach_of_the_best_peers_and_repeated_cells_are_left_alone():
    best = _record("quack", "peers", 1.0)
    near = _record("ours-triton", "ours", 100 / (100 - OFF_CELL_POINTS + 0.5))
    slow_peer = _record("torch-F", "peers", 2.0)
    repeated = _record("ours-auto", "ours", 2.0, 2.0, 2.0, mode=FORWARD_BACKWARD)
    failed = {"impl": "ours-cuda", "group": "ours", "status": "failed"}
    records = [best, near, slow_peer, repeated, failed]
    timers = [Timer() for _ in records]
    before = [dict(r) for r in records]
    repeat_off_cells(records, timers, CEILING_GBPS)
    assert [t.calls for t in timers] == [0] * len(records)
    assert records == before


def test_a_repeat_that_fails_keeps_the_first_reading_and_says_why():
    peer, ours = _record("quack", "peers", 1.0), _record("ours-cuda", "ours", 2.0)
    repeat_off_cells([peer, ours], [Timer(), Timer(error=RuntimeError("out of memory\nmore"))], CEILING_GBPS)
    assert ours["ms"] == 2.0 and "ms_repeats" not in ours
    assert ours["repeat_reason"] == "RuntimeError: out of memory"


def test_the_report_notes_repeated_cells_only_where_there_are_some():
    peer, ours = _record("quack", "peers", 1.0), _record("ours-cuda", "ours", 1.25)
    assert _repeats_note([peer, ours], FORWARD) is None
    repeat_off_cells([peer, ours], [Timer(), Timer(1.0, 1.0)], CEILING_GBPS)
    note = _repeats_note([peer, ours], FORWARD)
    assert note.startswith(f"1 of our cells read more than {OFF_CELL_POINTS:g} points below")
    assert f"measured {OFF_CELL_REPEATS} times" in note and "widest 20.0 (ours-cuda, N=4096)" in note
    assert _repeats_note([_record("quack", "peers", 1.0, 1.0, 1.0)], FORWARD_BACKWARD).startswith("Median of 3")


def test_a_cell_whose_host_issues_calls_about_as_slowly_as_the_gpu_runs_them_is_marked_host_bound():
    """host_bound follows the medians: the host's 0.95 ms a call against the GPU's 1.0 is bound,
    0.85 against 1.0 is not; the table marks the bound cell "h" and the note names it."""
    bound = {"impl": "ours-triton", "group": "ours", "mode": FORWARD, "n": 32768, "rows": 4096, "bytes": BYTES,
             "status": "ok"}  # fmt: skip
    free = {**bound, "impl": "ours-cuda"}
    _set_times(bound, [CallTime(1.0, 0.95), CallTime(1.2, 0.2), CallTime(0.9, 1.0)], CEILING_GBPS)
    _set_times(free, [CallTime(1.0, 0.85)], CEILING_GBPS)
    assert bound["ms"] == 1.0 and bound["host_ms"] == 0.95 and bound["host_bound"] is True
    assert free["host_bound"] is False and HOST_BOUND_FRACTION == pytest.approx(0.9)
    _, _, row = _throughput_table([bound, free], ["ours-triton", "ours-cuda"])
    assert row == "| 32768 | 4096 | **1000 (100%)** * h | **1000 (100%)** |"
    note = _host_bound_note([bound, free])
    assert note.endswith("(host / GPU ms a call): ours-triton N=32768 0.95 / 1.00.")
    assert _host_bound_note([free]) is None


def test_swing_summary_tells_spread_within_an_allocation_from_spread_across_them():
    """Allocation 0 reads 100% twice, one of them host-bound (0.95 of 1.0 ms); allocation 1 reads 80
    then 100%: 20 points within it, medians 90 and 100 across the two."""
    from bench.swing import summarize

    readings = [[CallTime(1.0, 0.1), CallTime(1.0, 0.95)], [CallTime(1.25, 0.1), CallTime(1.0, 0.1)]]
    first, second, verdict = summarize(readings, int(BYTES), CEILING_GBPS).splitlines()
    assert first.split() == ["allocation", "0:", "100.0%", "(0.100/1.000)", "100.0%", "(0.950/1.000)"]
    assert second.split()[2:4] == ["80.0%", "(0.100/1.250)"]
    assert verdict.strip() == (
        "widest spread within an allocation 20.0 points; allocations' medians 90.0-100.0% (spread 10.0); "
        "host-bound readings 1 of 4"
    )


def _latency_record(impl: str, rows: int, **fields) -> dict:
    return {"impl": impl, "rows": rows, "status": "ok", "host_us": 10.0, "graph_us": 2.0, **fields}


def test_the_latency_table_has_the_training_host_time_only_where_it_was_measured():
    plain = [_latency_record("ours-cuda", 1), _latency_record("ours-cuda", 8)]
    assert _latency_table(plain, ["ours-cuda"])[0] == "| implementation | M=1 | M=8 |"
    records = [
        _latency_record("ours-cuda", 1, train_host_us=123.4),
        _latency_record("quack", 1, train_reason="failed: RuntimeError: no"),
        _latency_record("ours-cuda", 8),
        _latency_record("quack", 8),
    ]
    header, rule, cuda, quack = _latency_table(records, ["ours-cuda", "quack"])
    assert header == "| implementation | M=1 | M=8 | fwd+bwd host, M=1 |"
    assert rule == "|---|--:|--:|--:|"
    assert cuda == "| ours-cuda | 10.0 / 2.0 | 10.0 / 2.0 | 123.4 |"
    assert quack == "| quack | 10.0 / 2.0 | 10.0 / 2.0 | failed: RuntimeError: no |"


def test_host_times_are_medians_of_interleaved_rounds(monkeypatch):
    """Every implementation is timed once a round, in turn; its host time is its rounds' median, with
    their spread; one whose call raises keeps its reason and no time."""
    readings = {"a": iter([30.0, 10.0, 20.0, 50.0, 40.0]), "b": iter([5.0] * 5)}
    order = []

    def fake_host_us_per_call(call, calls):
        name = call()
        order.append(name)
        if name == "bad":
            raise RuntimeError("no launch")
        return next(readings[name])

    monkeypatch.setattr(latency, "host_us_per_call", fake_host_us_per_call)
    monkeypatch.setattr(latency, "LATENCY_HOST_ROUNDS", 5)
    a, b, bad = {}, {}, {}
    latency._host_rounds([
        (a, "host_us", "reason", lambda: "a", 1, False),
        (b, "train_host_us", "train_reason", lambda: "b", 1, True),
        (bad, "host_us", "reason", lambda: "bad", 1, False),
    ])  # fmt: skip
    assert order[:6] == ["a", "b", "bad", "a", "b", "a"]  # interleaved; the failed call not retried
    assert a == {"host_us": 30.0, "host_us_spread": 40.0}
    assert b == {"train_host_us": 5.0, "train_host_us_spread": 0.0}
    assert bad == {"reason": "RuntimeError: no launch"}
    note = _latency_spread_note([_latency_record("x", 1, host_us=30.0, host_us_spread=40.0)])
    assert note.endswith("Widest spread (max - min) of a cell's rounds: 40.0 us on 30.0 (x, M=1, no grad).")


def test_host_breakdown_training_cases_run():
    """Every case bench/host_breakdown times for the training step runs and returns gradients, on the
    tensors and backends this machine has (Triton's interpreter on CPU here), so the tool does not rot
    between GPU sessions."""
    x = torch.randn(1, host_breakdown.N, device=DEVICE, dtype=torch.bfloat16)
    w = torch.randn(host_breakdown.N, device=DEVICE, dtype=torch.bfloat16)
    cases = host_breakdown.training_layers(x, w)
    assert "triton: forward+backward (autograd.grad)" in cases
    for name, case in cases.items():
        for _ in range(2):  # the backward-alone case replays its graph
            out = case()
        outputs = out if isinstance(out, tuple) else (out,)
        assert all(isinstance(t, torch.Tensor) and t.device == x.device for t in outputs), name


def test_graph_trace_splits_a_replay_into_kernel_times_and_gaps():
    """Four calls of kernels a then b: a's median duration is 1 us (one call's a took 5), b's 2 us; the
    gaps from a call's end to the next call's start are 0.5, 0.5 and 3 us: median 0.5, where a mean
    would read 1.33."""
    from bench.graph_trace import summarize

    kernels = []
    for start, a_us in ((0.0, 1.0), (3.5, 1.0), (7.0, 1.0), (13.0, 5.0)):
        kernels += [("a", start, a_us), ("b", start + a_us, 2.0)]
    kernel_a, kernel_b, gaps = summarize(kernels, calls=4).splitlines()
    assert kernel_a.split() == ["kernel", "0:", "1.00", "us", "a"]
    assert kernel_b.split() == ["kernel", "1:", "2.00", "us", "b"]
    assert gaps.split() == ["gap", "between", "calls:", "median", "0.50", "us;", "span", "per", "call", "5.00", "us"]
    assert summarize(kernels[:-1], calls=4).startswith("7 kernels for 4 calls")


def test_kernel_trace_adds_the_idle_time_inside_a_call_and_the_span_against_the_ceiling():
    """Three calls of kernels a then b with 0.5, 0 and 2 us between them (median 0.5, where a mean would
    read 0.83), calls 4 us apart: a span of 4 us a call, against an ideal of 3 us, 75%."""
    from bench.kernel_trace import idle_and_span

    kernels = []
    for start, idle in ((0.0, 0.5), (4.0, 0.0), (8.0, 2.0)):
        kernels += [("a", start, 1.0), ("b", start + 1.0 + idle, 1.0)]
    lines = idle_and_span(kernels, 3.0, calls=3).splitlines()
    expected = "idle inside a call: median 0.50 us; span per call 4.0 us against 3.0 at the copy ceiling (75.0%)"
    assert lines[-1].split() == expected.split()
    assert lines[0].split()[:3] == ["kernel", "0:", "1.00"]
    assert idle_and_span(kernels[:-1], 3.0, calls=3).startswith("5 kernels for 3 calls")


def test_tune_triton_constants_candidates_are_parsed_as_literals_of_existing_constants():
    """`--constants A=1,B=True`: each value a Python literal (a tuple too); a name triton_kernels lacks stops the run
    before any timing, naming it."""
    from bench.tune_triton import _parse_candidate

    assert _parse_candidate("PROGRAMMATIC_DW_REDUCE=True,DW_REDUCE_MAX_BLOCK_P=32") == {
        "PROGRAMMATIC_DW_REDUCE": True,
        "DW_REDUCE_MAX_BLOCK_P": 32,
    }
    assert _parse_candidate("BWD_DX_CACHE_MODIFIER=''") == {"BWD_DX_CACHE_MODIFIER": ""}
    # A tuple's commas are the value's, not the list's.
    assert _parse_candidate("BWD_PIPELINE=((4096, 2, 3), (8192, 1, 3)),BWD_TILE_ELEMENTS=8192") == {
        "BWD_PIPELINE": ((4096, 2, 3), (8192, 1, 3)),
        "BWD_TILE_ELEMENTS": 8192,
    }
    with pytest.raises(SystemExit, match="NO_SUCH_CONSTANT"):
        _parse_candidate("NO_SUCH_CONSTANT=1")


def test_tune_triton_constants_add_forward_call_is_add_rms_norm_with_dy_as_residual():
    """`--modes add-forward`: one add_rms_norm call on triton, dy standing in for the residual."""
    import rmsnorm
    from bench.cases import ADD_FORWARD, EPS
    from bench.tune_triton import _constants_call

    x, dy, w = (torch.randn(*shape, device=DEVICE) for shape in ((3, 64), (3, 64), (64,)))
    y, residual_out = _constants_call(ADD_FORWARD, x, w, dy)()
    expected_y, expected_residual_out = rmsnorm.add_rms_norm(x, dy, w, EPS, backend="triton")
    assert torch.equal(residual_out, expected_residual_out) and torch.equal(residual_out, x + dy)
    assert torch.equal(y, expected_y)


def test_paired_host_times_alternate_the_two_calls_and_take_each_ones_median(monkeypatch):
    """A stand-in clock that each call moves on by its own cost: the medians are the costs whatever
    the order, and the two take turns to go first."""
    now, order = [0.0], []

    def costing(name: str, seconds: float):
        def call() -> None:
            order.append(name)
            now[0] += seconds

        return call

    monkeypatch.setattr(latency.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(latency.torch.cuda, "synchronize", lambda: None)
    ours, reference = latency.paired_host_us(costing("ours", 30e-6), costing("F", 12e-6), calls=4)
    assert (ours, reference) == pytest.approx((30.0, 12.0))
    assert order[2 * latency.HOST_WARMUP_CALLS :] == ["ours", "F", "F", "ours", "ours", "F", "F", "ours"]


def test_the_paired_note_gives_each_ratio():
    record = _latency_record(
        "ours-triton", 1, paired_host_us=21.0, reference_paired_host_us=12.0, paired_reference="torch-F",
        paired_calls=2000,
    )  # fmt: skip
    note = _latency_paired_note([record, _latency_record("torch-F", 1)])
    assert note.startswith("Host time a call at M=1 timed call by call against torch-F's")
    assert "2000 calls each" in note and note.endswith("ours-triton 21.0 against 12.0 us (1.75x).")
    assert _latency_paired_note([_latency_record("ours-triton", 1)]) == ""


@pytest.mark.skipif(not ON_GPU, reason="times calls on a CUDA GPU; none here")
def test_the_latency_phase_times_ours_call_by_call_against_f_rms_norm(monkeypatch):
    from bench.implementations import load_implementations

    monkeypatch.setattr(latency, "LATENCY_ROWS", (1, 8))
    monkeypatch.setattr(latency, "LATENCY_HOST_ROUNDS", 1)
    monkeypatch.setattr(latency, "HOST_CALLS", 10)
    monkeypatch.setattr(latency, "TRAIN_HOST_CALLS", 2)
    monkeypatch.setattr(latency, "PAIRED_CALLS", 20)
    impls, _ = load_implementations(("ours-triton", "torch-F"))
    records = {(r["impl"], r["rows"]): r for r in latency.measure_latency(impls, lambda line: None)}
    ours, reference = records["ours-triton", 1], records["torch-F", 1]
    assert ours["paired_host_us"] > 0 and ours["reference_paired_host_us"] > 0
    assert ours["paired_reference"] == "torch-F" and ours["paired_calls"] == 20
    assert "paired_host_us" not in reference and "paired_host_us" not in records["ours-triton", 8]
