"""cockpit.logs: line formats (golden), chunking invariance (hypothesis), the follower, summaries, the full parse."""

import dataclasses
import json
import os
from pathlib import Path

import pytest
from helpers import FIXTURES, GOLDEN
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cockpit import logs
from cockpit.logs import summary

FORMAT_FIXTURES = [
    "fork-log-excerpt",
    "upstream-bf16",
    "upstream-old-mfu",
    "trainer-junk",
    "crashed-torchrun",
]


def records(path: Path) -> list:
    """Every known line of a fixture as [kind, fields] (what the golden files hold)."""
    out = []
    for line in logs.read_lines(path):
        rec = logs.parse_line(line)
        if rec is not None:
            out.append([type(rec).__name__, dataclasses.asdict(rec)])
    return json.loads(json.dumps(out))  # tuples -> lists, as in the file


@pytest.mark.parametrize("name", FORMAT_FIXTURES)
def test_line_formats_match_golden(name):
    got = records(FIXTURES / f"{name}.log")
    golden = GOLDEN / f"parse-{name}.json"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(json.dumps(got, indent=1) + "\n")
    assert got == json.loads(golden.read_text())


def test_fork_line_fields():
    line = (
        "step 00279/00280 (99.64%) | loss: 3.723798 | bal: 24.0192 | lrm: 0.06 | dt: 637.19ms | "
        "tok/sec: 822,814 | bf16_mfu: 9.96 | epoch: 1 | total time: 2.97m | eta: 0.0m"
    )
    r = logs.parse_step(line)
    assert (r.step, r.total, r.pct, r.loss, r.bal, r.lrm) == (279, 280, 99.64, 3.723798, 24.0192, 0.06)
    assert (r.dt_ms, r.tok_per_sec, r.mfu, r.epoch, r.total_time_min, r.eta_min) == (
        637.19,
        822814,
        9.96,
        1,
        2.97,
        0.0,
    )
    assert r.extra == {}


def test_fields_by_name_any_order_units_and_unknowns():
    r = logs.parse_step(
        "step 7/10 | mfu: 1.5 | tok/sec: 1,234,567 | dt: 0.5s | new: x | drop: 2.5% | loss: nan"
    )
    assert (r.step, r.total, r.pct, r.mfu, r.tok_per_sec, r.dt_ms, r.drop_pct) == (
        7,
        10,
        None,
        1.5,
        1234567,
        500,
        2.5,
    )
    assert r.loss != r.loss  # nan stays a float
    assert r.extra == {"new": "x"}
    bad = logs.parse_step("step 00001/00002 (50.00%) | loss: ??? | dt: 5ms")
    assert bad.loss is None and bad.extra == {"loss": "???"} and bad.dt_ms == 5
    assert logs.parse_step("step function of the scheduler") is None
    assert logs.parse_step("moe step 00001 | drop: 0.0%") is None
    assert logs.parse_step("[default3]:step 00004/00010 (40.00%) | loss: 1.5").step == 4


def test_an_int_field_of_nan_or_inf_is_kept_aside():
    for v in ("inf", "nan", "-inf", "1e999"):
        rec = logs.parse_step(f"step 00001/00002 (50.00%) | loss: 1.0 | epoch: {v}")
        assert rec.epoch is None and rec.extra == {"epoch": v} and rec.loss == 1.0


def test_moe_val_final_lines():
    m = logs.parse_moe("moe step 00042 | drop: 1.20% | load: 0.131,0.122,0.125 | bal: 1.0023")
    assert (m.step, m.drop_pct, m.load, m.bal) == (42, 1.2, (0.131, 0.122, 0.125), 1.0023)
    v = logs.parse_val("Step 00250 | Validation bpb: 0.8123")
    assert (v.step, v.name, v.value) == (250, "Validation bpb", 0.8123)
    assert logs.parse_final("Peak memory usage: 18987.83MiB").value == 18987.83
    assert logs.parse_final("Total training time: 2.97m").value == 2.97
    assert logs.parse_line("Total training time: soon") is None
    assert logs.parse_line("Minimum validation bpb: 0.801234") == logs.FinalLine("min_val_bpb", 0.801234)
    assert logs.parse_line("Total batch size 524,288 => gradient accumulation steps: 4").value == 524288
    assert logs.parse_line("Total batch size unknown") is None
    for junk in [
        "",
        "\x00\x01",
        "Traceback (most recent call last):",
        "step",
        "[",
        "[rank0]: [",
        "Step x | y",
    ]:
        assert logs.parse_line(junk) is None


# ---------------------------------------------------------------------------------------------
# chunking: any split of a byte stream gives the same lines and the same summary

FIXTURE_BYTES = [(FIXTURES / f"{n}.log").read_bytes() for n in FORMAT_FIXTURES]
JUNK = [
    b"\r",
    b"\r\n",
    b"\n",
    b"\xff\xfe",
    b"\xc3",
    b"\xe2\x82",
    b"junk | : |",
    b"step ",
    b"step 0000",
    b"moe step",
]


@st.composite
def streams(draw):
    pieces = []
    for _ in range(draw(st.integers(1, 12))):
        if draw(st.booleans()):
            data = draw(st.sampled_from(FIXTURE_BYTES))
            a = draw(st.integers(0, len(data)))
            pieces.append(data[a : a + draw(st.integers(0, 600))])
        else:
            pieces.append(draw(st.sampled_from(JUNK)))
    data = b"".join(pieces)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=20)))
    return data, cuts


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    out, prev = [], 0
    for c in cuts:
        out.append(data[prev:c])
        prev = c
    return out + [data[prev:]]


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.integers(8, 200))
def test_a_block_of_lines_is_the_splitters_lines_joined(stream, max_line):
    data, cuts = stream
    blocks, lines = logs.LineSplitter(max_line=max_line), logs.LineSplitter(max_line=max_line)
    for part in split_at(data, cuts):
        assert [x for x in blocks.feed_block(part).split(b"\n") if x] == lines.feed_bytes(part)
    assert blocks.flush() == lines.flush()


def fingerprint(state: logs.LogState):
    s = logs.summary_of(state, "x.log", now=0)
    return (
        [dataclasses.asdict(r) for r in state.steps],
        {k: v for k, v in dataclasses.asdict(s).items() if k not in ("path", "size", "mtime")},
    )


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.integers(8, 200))
def test_any_chunking_parses_the_same(stream, max_line):
    data, cuts = stream
    whole = logs.LineSplitter(max_line=max_line)
    expected = whole.feed(data) + whole.flush()
    chunked = logs.LineSplitter(max_line=max_line)
    got = []
    for part in split_at(data, cuts):
        got += chunked.feed(part)
    got += chunked.flush()
    assert got == expected
    assert all("\r" not in ln and "\n" not in ln and ln for ln in got)
    assert all(len(ln.encode("utf-8", "surrogatepass")) <= 3 * max_line for ln in got)

    a, b = logs.LogState(keep_steps=None), logs.LogState(keep_steps=None)
    a.feed_many(expected)
    for ln in got:
        b.feed(ln)
    assert fingerprint(a) == fingerprint(b)


def test_splitter_lines_are_the_bytes_lines():
    data = b"a\r\nb\rc\n\n\xffd\ne"
    sp = logs.LineSplitter()
    assert sp.feed(data) == ["a", "b", "c", "\ufffdd"]
    assert sp.flush() == ["e"] and sp.flush() == []


def test_splitter_bounds_a_line_without_newline():
    sp = logs.LineSplitter(max_line=100)
    for _ in range(1000):
        assert sp.feed(b"x" * 1000) == []
        assert len(sp.partial) <= 100
    assert sp.feed(b"yyy\nnext\n") == ["x" * 100, "next"]


# ---------------------------------------------------------------------------------------------
# the follower


def test_follower_reads_only_new_bytes_and_holds_partial_lines(tmp_path):
    p = tmp_path / "leg.log"
    f = logs.LogFollower(p)
    assert f.poll() == []  # no file yet
    p.write_bytes(b"one\ntw")
    assert f.poll() == ["one"]
    assert f.poll() == []
    with open(p, "ab") as w:
        w.write(b"o\rthree\xff\n")
    assert f.poll() == ["two", "three\ufffd"]
    assert f.offset == p.stat().st_size


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(streams(), st.integers(1, 4096))
def test_follower_sees_a_growing_file_as_the_whole(tmp_path, stream, max_bytes):
    """Bytes appended in any chunks, polled in between, read at most max_bytes a poll."""
    data, cuts = stream
    p = tmp_path / "grow.log"
    p.write_bytes(b"")
    f = logs.LogFollower(p, max_bytes=max_bytes)
    got = []
    with open(p, "ab") as w:
        for part in split_at(data, cuts):
            w.write(part)
            w.flush()
            got += f.poll()
    while lines := f.poll():
        got += lines
    while f.offset < len(data):  # a poll may return no complete line yet still read bytes
        got += f.poll()
    got += f.flush()
    whole = logs.LineSplitter()
    assert got == whole.feed(data) + whole.flush()
    f.close()


def test_follower_starts_over_on_truncation_and_replacement(tmp_path):
    p = tmp_path / "leg.log"
    p.write_bytes(b"step 00001/00002 (50.00%) | loss: 2.0\nold tail\n")
    f = logs.LogFollower(p)
    assert len(f.poll()) == 2
    p.write_bytes(b"new\n")  # truncated (shorter) and rewritten
    assert f.poll() == ["new"] and f.resets == 1
    q = tmp_path / "other.log"
    q.write_bytes(b"replaced line one\nreplaced line two, long enough to pass the old offset\n")
    os.replace(q, p)  # a new inode at the path
    assert f.poll() == ["replaced line one", "replaced line two, long enough to pass the old offset"]
    assert f.resets == 2
    p.unlink()
    assert f.poll() == []  # gone: nothing, no error
    f.close()


def test_follower_reads_a_big_backlog_in_bounded_polls(tmp_path):
    p = tmp_path / "leg.log"
    p.write_bytes(b"line\n" * 100_000)
    f = logs.LogFollower(p, max_bytes=64 * 1024)
    total, polls = 0, 0
    while lines := f.poll():
        assert len(lines) <= 64 * 1024 // 5 + 1
        total += len(lines)
        polls += 1
    assert total == 100_000 and polls > 5


# ---------------------------------------------------------------------------------------------
# summaries


def test_summary_of_a_finished_fork_log():
    s = logs.summarize(FIXTURES / "fork-log-excerpt.log")
    assert s.status == "completed" and s.finished and not s.failed
    # 20 step lines, step 0 among them (8.9 s of compilation): the tail means leave it out
    assert (s.last_step, s.total_steps, s.pct, s.last_loss, s.steps_observed, s.tail_n) == (
        279,
        280,
        100.0,
        3.723798,
        20,
        19,
    )
    assert s.tail_values["dt_ms"][0] == 617.79 and 8935.08 not in s.tail_values["dt_ms"]
    assert (s.peak_mem_mib, s.total_time_min, s.bal) == (18987.83, 2.97, 24.0192)
    s5 = logs.summarize(FIXTURES / "fork-log-excerpt.log", tail=5)  # steps 275-279
    assert s5.tail_n == 5
    assert f"{s5.tok_per_sec:.2f}" == f"{(820467 + 814217 + 828865 + 833149 + 822814) / 5:.2f}"
    assert f"{s5.dt_ms:.2f}" == "636.39" and f"{s5.mfu:.4f}" == "9.9700"
    assert s5.tail_values["dt_ms"] == (639.01, 643.92, 632.54, 629.28, 637.19)
    assert s5.tail_values["tok_per_sec"][-1] == 822814 and len(s5.tail_values["mfu"]) == 5
    assert s5.tail_bal == pytest.approx((24.0378 + 24.0 + 24.0721 + 24.0662 + 24.0192) / 5)
    # no validation and no drop field in the fork's log: none, never 0
    assert (s5.min_val_bpb, s5.last_val_bpb, s5.tail_drop_pct, s5.batch_tokens) == (None, None, None, None)


def test_progress_of_a_running_log_is_the_logs_own_line(tmp_path):
    """Step and percent as the last step line prints them (never 100% before the final lines, even
    when the log rounds to it), the ETA as h:mm:ss, and the steps the tail rests on said."""
    from cockpit.logs import progress

    p = tmp_path / "run.log"
    p.write_text(
        "".join(
            f"step {i:05d}/00040 ({100 * i / 40:.2f}%) | loss: 2.000000 | dt: 100.00ms | "
            f"tok/sec: 1,000 | total time: 0.01m | eta: 2.6m\n"
            for i in range(40)
        )
    )
    s = logs.summarize(p, tail=50)
    assert (s.last_step, s.total_steps, s.pct, s.tail_n) == (39, 40, 97.5, 39)  # 39 of 40 steps: not 100%
    assert progress.line(s, 50) == (
        "step 39/40 (97.50%), loss 2.0000, 1,000 tok/s (tail 39 of 50 steps, step 0 left out), ETA 0:02:36"
    )
    assert progress.tail_text(s.tail_n, 39) == "" and progress.short_tail(39, 50)
    # a log whose own percent rounds to 100 while it runs: still short of it
    p.write_text("step 39999/40000 (100.00%) | loss: 2.000000 | dt: 100.00ms\n")
    s = logs.summarize(p)
    assert s.pct == summary.PCT_BEFORE_END and progress.pct_text(s.pct) == "99.99%"
    assert s.eta_min == pytest.approx(0.0) and progress.eta_text(s.eta_min) == "0:00:00"
    # no percent in the line: step / total, as the trainer computes it
    p.write_text("step 10/40 | loss: 2.000000\n")
    assert logs.summarize(p).pct == 25.0
    p.write_text("step 39/40 | loss: 2.000000\nPeak memory usage: 1.00MiB\nTotal training time: 0.01m\n")
    assert logs.summarize(p).pct == 100.0  # the final lines: done
    assert [progress.eta_text(m) for m in (None, 0.5, 61.25, 1666.7, float("nan"))] == [
        "-",
        "0:00:30",
        "1:01:15",
        "27:46:42",
        "-",
    ]
    assert (progress.step_text(None, 40), progress.step_text(3, None)) == ("-", "3/?")


def test_summary_reads_quality_and_routing(tmp_path):
    """Validation bpb (every line, the trainer's minimum), the drop and balance fields of the step
    lines (tail means), the batch size; a log without the minimum line takes the least one seen."""
    lines = ["Total batch size 1,024 => gradient accumulation steps: 1"]
    for i in range(6):
        lines.append(
            f"step {i:05d}/00006 ({100 * i / 6:.2f}%) | loss: {3 - i / 10:.6f} | bal: 1.{i}000 | lrm: 1.00 | "
            f"dt: 100.00ms | tok/sec: 10,240 | bf16_mfu: 0.00 | epoch: 0 | total time: 0.00m | drop: {i}.00%"
        )
        if i % 2 == 0:
            lines.append(f"Step {i:05d} | Validation bpb: {2 - i / 10:.6f}")
    lines += ["Step 00006 | Validation bpb: 1.700000"]
    (tmp_path / "a.log").write_text("\n".join(lines) + "\n")
    s = logs.summarize(tmp_path / "a.log", tail=4)
    assert (s.min_val_bpb, s.last_val_bpb, s.batch_tokens) == (1.6, 1.7, 1024)
    assert s.tail_drop_pct == pytest.approx((2 + 3 + 4 + 5) / 4) and s.tail_bal == pytest.approx(1.35)
    assert s.last_loss == 2.5
    final = ["Peak memory usage: 1.00MiB", "Total training time: 0.01m", "Minimum validation bpb: 1.500000"]
    (tmp_path / "a.log").write_text("\n".join(lines + final) + "\n")
    s = logs.summarize(tmp_path / "a.log")
    assert s.min_val_bpb == 1.5 and s.finished  # the trainer's own minimum wins
    full = logs.parse_file(tmp_path / "a.log")
    assert [(v.step, v.value) for v in full.val_bpb] == [(0, 2.0), (2, 1.8), (4, 1.6), (6, 1.7)]


def test_summary_of_a_crash_keeps_the_reason():
    s = logs.summarize(FIXTURES / "crashed-torchrun.log")
    assert s.status == "failed" and s.failed and not s.finished
    assert s.error_line.startswith("torch.OutOfMemoryError: CUDA out of memory")
    assert s.failure[0].startswith("[rank3]:")  # the worker's traceback, not torchrun's
    assert "exitcode  : 1 (pid: 4253)" in s.failure
    assert (s.last_step, s.drop_pct, s.moe_load[0]) == (2, 1.31, 0.131)


def test_torchrun_summary_alone_is_a_failure(tmp_path):
    p = tmp_path / "x.log"
    text = (FIXTURES / "crashed-torchrun.log").read_text().split("W1126 04:10:31")[1]
    p.write_text("step 00001/00002 (50.00%) | loss: 2.0\nW1126 04:10:31" + text)
    s = logs.summarize(p)
    assert s.failed and "failed (exitcode: 1)" in s.error_line


def test_argparse_error_is_the_failure_cause(tmp_path):
    """A bad flag: argparse's usage + `prog: error:` (exit 2, no traceback), then torchrun's summary."""
    torchrun = (FIXTURES / "crashed-torchrun.log").read_text().split("W1126 04:10:31")[1]
    torchrun = "W1126 04:10:31" + torchrun.replace("exitcode: 1", "exitcode: 2").replace(
        "exitcode  : 1", "exitcode  : 2"
    )
    usage = "[rank0]: usage: base_train.py [-h] [--run RUN] [--device-type DEVICE_TYPE] [--depth DEPTH]"
    error = "[rank0]: base_train.py: error: unrecognized arguments: --bogus 1"
    p = tmp_path / "bad_flag.log"
    p.write_text(
        f"Autodetected device type: cuda\n{usage}\n[rank0]:                      [--aspect-ratio N]\n{error}\n{torchrun}"
    )
    s = logs.summarize(p)
    assert s.status == "failed" and s.failed and not s.finished and s.last_step is None
    assert (
        s.error_line == "base_train.py: error: unrecognized arguments: --bogus 1"
    )  # before torchrun's lines
    assert s.failure[:2] == [usage, error] and "exitcode  : 2 (pid: 4253)" in s.failure
    assert not any("ChildFailedError" in ln for ln in s.failure)  # torchrun's own traceback is not the cause
    full = logs.parse_file(p)
    assert full.failed and full.failure.error_line == s.error_line
    # this trainer prints the error line alone (no usage block), unprefixed
    p.write_text("base_train: error: unrecognized arguments: --bogus 1\n")
    s = logs.summarize(p)
    assert s.status == "failed" and s.error_line == "base_train: error: unrecognized arguments: --bogus 1"
    assert s.failure == ["base_train: error: unrecognized arguments: --bogus 1"]


def test_usage_lines_and_error_words_alone_are_not_failures(tmp_path):
    p = tmp_path / "x.log"
    p.write_text(
        "usage: some_tool [-h]\nstep 00000/00002 (0.00%) | loss: 2.0\n"  # a usage block then training: not a failure
        "NCCL INFO comm error: none\ntotal error: 0.1\n  indented: error: x\n"  # not `prog: error:`
        "step 00001/00002 (50.00%) | loss: 1.0\nPeak memory usage: 1.00MiB\nTotal training time: 0.10m\n"
        "usage: summary printed after the run\n"
    )
    s = logs.summarize(p)
    assert s.status == "completed" and not s.failed and s.failure == [] and s.error_line is None
    # an argparse error after training went on and finished: failed (the last word wins)
    with open(p, "a") as f:
        f.write("eval.py: error: argument --task: invalid choice: 'x'\n")
    s = logs.summarize(p)
    assert s.failed and s.failure == [
        "usage: summary printed after the run",
        "eval.py: error: argument --task: invalid choice: 'x'",
    ]


def test_training_that_goes_on_after_a_traceback_is_not_failed(tmp_path):
    p = tmp_path / "x.log"
    p.write_text(
        "Traceback (most recent call last):\n  File 'x', line 1\nUserWarning: meh\n"
        "step 00001/00002 (50.00%) | loss: 2.0\nPeak memory usage: 1.00MiB\nTotal training time: 0.10m\n"
    )
    s = logs.summarize(p)
    assert s.status == "completed" and not s.failed


def test_unfinished_log_is_running_while_fresh_then_unknown(tmp_path):
    p = tmp_path / "x.log"
    p.write_bytes((FIXTURES / "upstream-old-mfu.log").read_bytes())
    mtime = p.stat().st_mtime
    s = logs.summarize(p, now=mtime + 10)
    assert s.status == "running" and s.last_step == 3  # the cut last line waits for its newline
    assert s.eta_min is not None and s.peak_mem_mib is None
    assert logs.summarize(p, now=mtime + 3600).status == "unknown"


def test_summary_never_raises(tmp_path):
    s = logs.summarize(tmp_path / "missing.log")
    assert s.error and s.status == "unknown"
    (tmp_path / "bin.log").write_bytes(os.urandom(50_000))
    assert logs.summarize(tmp_path / "bin.log").status in ("unknown", "failed", "running")
    (tmp_path / "empty.log").write_bytes(b"")
    assert logs.summarize(tmp_path / "empty.log").steps_observed == 0


def test_big_log_is_read_from_its_end_with_the_same_figures(tmp_path, monkeypatch):
    p = tmp_path / "big.log"
    lines = [f"junk line {i} " + "x" * 80 for i in range(30_000)]  # ~2.7 MB of noise first
    for i in range(400):  # then steps, each followed by 5 KB of noise
        lines += [
            f"step {i:05d}/00400 ({i / 4:.2f}%) | loss: {5 - i / 100:.6f} | lrm: 1.00 | dt: {600 + i % 7:.2f}ms | "
            f"tok/sec: {800_000 + i:,} | bf16_mfu: {9 + (i % 3) / 10:.2f} | epoch: 0 | total time: {i / 100:.2f}m",
            "W noise " + "y" * 5000,
        ]
    lines += ["Peak memory usage: 100.00MiB", "Total training time: 4.00m"]
    p.write_text("\n".join(lines) + "\n")
    full = logs.parse_file(p)
    reads = []
    real_open = open

    def spy_open(*a, **k):
        f = real_open(*a, **k)
        orig = f.read
        f.read = lambda n=-1: (reads.append(n), orig(n))[1]
        return f

    monkeypatch.setattr("builtins.open", spy_open)
    s = logs.summarize(p)
    monkeypatch.undo()
    assert p.stat().st_size > summary.SMALL_LOG_BYTES and not s.exact_count
    assert sum(n for n in reads if n and n > 0) < p.stat().st_size  # not the whole file
    assert (s.tok_per_sec, s.dt_ms, s.mfu) == (
        full.tail_mean("tok_per_sec"),
        full.tail_mean("dt_ms"),
        full.tail_mean("mfu"),
    )
    assert (s.last_step, s.steps_observed, s.peak_mem_mib, s.status) == (399, 400, 100.0, "completed")
    # no step line in the head: the count is what the tail read saw, marked as not exact
    p.write_text("\n".join(["x" * 100] * 50_000 + lines[30_000:]) + "\n")
    s = logs.summarize(p)
    assert not s.exact_count and s.steps_observed == 50 and s.tail_n == 50


# ---------------------------------------------------------------------------------------------
# the full parse reads a file a chunk at a time: it must give exactly what feeding every line gives


def per_line(path: Path, tail: int = 50) -> logs.LogState:
    state = logs.LogState(tail=tail, keep_steps=None)
    splitter = logs.LineSplitter()
    state.feed_many(splitter.feed(path.read_bytes()))
    state.feed_many([ln for ln in splitter.flush() if logs.parse_step(ln) is None])
    return state


def canon(x):
    """A structure for == that tells 42 from 42.0 and compares floats bit for bit (NaN too)."""
    if isinstance(x, float):
        return ("float", repr(x))
    if isinstance(x, dict):
        return {k: canon(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [canon(v) for v in x]
    return x


def same_state(a: logs.LogState, b: logs.LogState) -> None:
    assert canon(a.table.as_lists()) == canon(b.table.as_lists())
    sa, sb = logs.summary_of(a, "x.log", now=0), logs.summary_of(b, "x.log", now=0)
    assert canon(dataclasses.asdict(sa)) == canon(dataclasses.asdict(sb))
    assert a.lines_seen == b.lines_seen
    assert canon([dataclasses.asdict(r) for r in a.window]) == canon(
        [dataclasses.asdict(r) for r in b.window]
    )


@pytest.mark.parametrize(
    "name",
    FORMAT_FIXTURES
    + ["seed/20260224_175412_moe-fp8-capacity-ablation-v1/static_cap1p0", "cpu-smoke/moe_cap1p0"],
)
def test_full_parse_equals_the_line_parser(name):
    path = FIXTURES / f"{name}.log"
    state = logs.parse_file(path)
    same_state(state, per_line(path))
    assert len(state.table) == state.steps_observed > 0


@pytest.mark.slow
def test_full_parse_of_many_layouts_and_oddities(tmp_path):
    lines = []
    for i in range(3000):
        base = f"step {i:05d}/03000 ({i / 30:.2f}%) | loss: {6 - i / 1000:.6f} | lrm: 1.00 | dt: {600 + i % 9:.2f}ms"
        tail = f" | tok/sec: {800_000 + i * 7:,} | bf16_mfu: {9 + i % 5 / 10:.2f} | epoch: 0 | total time: {i / 100:.2f}m"
        kind = i % 23
        if kind == 1:
            line = base + tail + f" | eta: {i / 10:.1f}m | drop: {i % 3:.2f}%"
        elif kind == 2:
            line = base.replace("ms", "s") + tail.replace("bf16_mfu", "mfu")  # other units and names
        elif kind == 3:
            line = base + tail + " | flag: on"  # an unknown field: extra
        elif kind == 4:
            line = f"step {i}/3000 | loss: nan | dt: 1.5e2ms | tok/sec: 12_000"  # odd numbers
        elif kind == 5:
            line = "step function of the scheduler: cosine"
        elif kind == 6:
            line = f"[rank0]:step {i:05d}/03000 ({i / 30:.2f}%) | loss: 1.0"
        elif kind == 7:
            line = "Traceback (most recent call last):\n  File 'x'\nValueError: transient"
        elif kind == 8:
            line = f"moe step {i:05d} | drop: 1.20% | load: 0.5,0.5 | bal: 1.0{i % 10}"
        elif kind == 9:
            line = base + " | loss: 1..2" + tail
        elif kind == 10:
            line = "usage: base_train.py [-h] [--run RUN]"  # an argparse error's usage, training goes on
        elif kind == 11:
            line = "base_train.py: error: unrecognized arguments: --bogus 1"
        elif kind == 12:
            line = f"[rank1]: moe step {i:05d} | drop: 2.00% | load: 0.25,0.75 | bal: 1.5{i % 10}"
        elif kind == 13:
            line = f"moe step {i:05d} | drop: 1.0{i % 10}% "  # a trailing blank
        elif kind == 14:
            line = f"moe step x{i} | drop: 1.00%"  # a head that is no number
        elif kind == 15:
            line = base.replace("loss: ", "loss: -") + tail  # a sign
        elif kind == 16:
            line = base + tail.replace(f"{800_000 + i * 7:,}", f"{i**3:,}")  # tok/sec of 1 to 11 digits
        elif kind == 18:
            line = (base + tail).replace("/03000 ", "/3,000 ")  # int() reads no comma: total is None
        elif kind == 17:
            line = base.replace(f"{6 - i / 1000:.6f}", f"{i / 7:.{i % 9}f}") + tail  # 0 to 8 decimals
        else:
            line = base + tail
        lines.append(line)
    lines += ["Peak memory usage: 100.00MiB", "Total training time: 4.00m"]
    p = tmp_path / "many.log"
    p.write_text("\n".join(lines) + "\n")
    expected = per_line(p)
    for chunk in (None, 4096, 333):
        state = logs.parse_file(p, chunk=chunk)
        same_state(state, expected)
    # handed over a chunk at a time: the same rows, in order, a chunk's worth at once
    handed = []
    streamed = logs.parse_file(p, chunk=4096, on_steps=lambda t: handed.append(t.rows()))
    rows = [dataclasses.asdict(r) for part in handed for r in part]
    assert canon(rows) == canon([dataclasses.asdict(r) for r in expected.table.rows()])
    assert len(handed) > 50 and max(map(len, handed)) <= 4096 // 50 and len(streamed.table) == 0
    assert (
        sum(1 for ln in lines if (r := logs.parse_step(ln)) and r.extra) > 100
    )  # unknown fields, kept aside
    assert expected.steps_observed > 1900 and not expected.failed
    assert expected.moe is not None and state.moe == expected.moe
    assert expected.table.as_lists()["total"].count(None) >= 3000 // 23  # the heads with a comma


@pytest.mark.slow
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(streams())
def test_full_parse_of_any_stream(tmp_path, stream):
    data, _ = stream
    p = tmp_path / "s.log"
    p.write_bytes(data)
    same_state(logs.parse_file(p), per_line(p))


def test_big_log_with_a_flood_of_noise_reads_bounded_text(tmp_path, monkeypatch):
    """Noise between and after the window's steps: only the steps and the last text are parsed."""
    monkeypatch.setattr(summary, "SMALL_LOG_BYTES", 16 * 1024)
    monkeypatch.setattr(summary, "TAIL_TEXT_BYTES", 32 * 1024)
    step = "step {i:05d}/00060 ({p:.2f}%) | loss: {l:.6f} | lrm: 1.00 | dt: {d:.2f}ms | tok/sec: {t:,} | bf16_mfu: 9.00"
    lines = []
    for i in range(60):
        lines.append(step.format(i=i, p=i / 0.6, l=5 - i / 100, d=600 + i, t=800_000 + i))
        lines += [f"noise {i} " + "z" * 100] * 20  # ~2 KB of noise after each step
    crash = (FIXTURES / "crashed-torchrun.log").read_text().split("[rank3]: Traceback")[1]
    lines += ["z" * 100] * 200 + ["[rank3]: Traceback" + crash]
    p = tmp_path / "flood.log"
    p.write_text("\n".join(lines) + "\n")
    s = logs.summarize(p, tail=50)
    full = logs.parse_file(p, tail=50)
    assert p.stat().st_size > 3 * summary.TAIL_TEXT_BYTES
    assert (s.tail_n, s.last_step, s.steps_observed) == (50, 59, 60)
    assert (s.tok_per_sec, s.dt_ms) == (full.tail_mean("tok_per_sec"), full.tail_mean("dt_ms"))
    assert s.failed and s.error_line.startswith("torch.OutOfMemoryError") and full.failed
    # fewer step lines than the window in the whole file: all of them but step 0, still bounded text
    s3 = logs.summarize(p, tail=100)
    assert (s3.tail_n, s3.last_step) == (59, 59) and s3.failed
