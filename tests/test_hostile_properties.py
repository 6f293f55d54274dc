"""Property tests: generated registries and logs (random bytes, escapes, huge numbers, odd
unicode) never produce a traceback, and a log's summary stays within a memory bound."""

from __future__ import annotations

import json
import math
import os
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from cockpit import (
    cli,
    expdir,
    logs,
    registry,
    report,
    report_files,
    report_md,
    resume,
    resume_text,
    safetext,
    stats,
)
from cockpit.logs import follow, summary

SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# ----------------------------------------------------------------------------------------------
# registries

ODD = [
    "\u202e",
    "\u2066",
    "\x1b[2J",
    "\x1b]0;t\x07",
    "\x00",
    "\x7f",
    "\u0085",
    "é",
    "𝔘",
    "\ufeff",
    "`",
    "|",
    "\\",
    "/",
    "..",
    "-",
    "~",
    "{exp_dir}",
    " ",
    "\t",
    "\n",
    "x" * 300,
]
odd_text = st.one_of(
    st.text(max_size=12),
    st.sampled_from(ODD),
    st.lists(st.sampled_from(ODD + ["a", "b", "1"]), max_size=4).map("".join),
)
numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1, 100000, 2**63, 99999999999999999999]),
)
scalars = st.one_of(st.booleans(), numbers, odd_text)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(odd_text, inner, max_size=3)),
    max_leaves=6,
)


def field(good, bad=values) -> st.SearchStrategy:
    """A key's value: mostly the right kind (so validation goes deep), one time in eight anything."""
    return st.integers(0, 7).flatmap(lambda i: bad if i == 0 else good)


plain = st.from_regex(r"[a-z][a-z0-9_.-]{0,12}", fullmatch=True)
name = field(plain, odd_text)
project = st.fixed_dictionaries(
    {
        "exp_root": field(st.just("exp"), st.one_of(values, odd_text.map(lambda t: f"exp/{t}"))),
    },
    optional={
        "name": name,
        "read_only": field(st.lists(plain.map(lambda t: f"ro/{t}"), max_size=2)),
        "branch": name,
        "tail": field(st.integers(1, 200), numbers),
        "on_failure": field(st.sampled_from(["stop", "continue"]), st.sampled_from(["retry", "", "STOP"])),
        "gpu_idle": field(
            st.fixed_dictionaries(
                {},
                optional={
                    "max_util_pct": field(st.floats(0, 100), numbers),
                    "max_mem_mib": field(st.integers(0, 10**5), numbers),
                    "wait_s": field(st.floats(0, 1000), numbers),
                },
            )
        ),
    },
)
leg = st.fixed_dictionaries(
    {"name": name},
    optional={
        "description": odd_text,
        "nproc_per_node": field(st.integers(1, 8), numbers),
        "args": st.dictionaries(st.one_of(st.just("depth"), plain, odd_text), scalars, max_size=3),
        "recorded": st.dictionaries(
            st.sampled_from(["tok_per_sec", "mfu", "dt_ms", "dir", "source", "nope"]),
            field(st.floats(0, 1e6), scalars),
            max_size=3,
        ),
    },
)
experiment = st.fixed_dictionaries(
    {"id": name, "leg": st.lists(leg, min_size=1, max_size=3)},
    optional={
        "title": odd_text,
        "device": field(st.sampled_from(["cpu", "cuda"]), st.sampled_from(["tpu", ""])),
        "nproc_per_node": field(st.integers(1, 8), numbers),
        "baseline": name,
        "decision": odd_text,
        "notes": st.lists(odd_text, max_size=2),
        "args": st.dictionaries(plain, scalars, max_size=2),
    },
)
registry_tables = st.fixed_dictionaries(
    {"project": project, "experiment": st.lists(experiment, min_size=1, max_size=3)},
    optional={
        "defaults": st.fixed_dictionaries(
            {},
            optional={
                "module": field(st.just("nanochat.base_train"), odd_text),
                "device": field(st.just("cpu"), odd_text),
                "nproc_per_node": field(st.integers(1, 8), numbers),
                "args": st.dictionaries(plain, scalars, max_size=3),
            },
        )
    },
)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{toml_string(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


def toml_string(text: str) -> str:
    """A TOML basic string: control characters (C0, DEL, C1) escaped, anything else as it is."""

    def one(c: str) -> str:
        if c in '"\\':
            return "\\" + c
        return f"\\u{ord(c):04x}" if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F else c

    return '"' + "".join(map(one, text)) + '"'


def toml_text(tables: dict) -> str:
    """Top-level keys first (arrays of tables inline), then one [table] per table."""
    out = [f"{toml_string(k)} = {toml_value(v)}" for k, v in tables.items() if not isinstance(v, dict)]
    for k, v in tables.items():
        if isinstance(v, dict):
            out.append(f"[{k}]")
            out += [f"{toml_string(kk)} = {toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(out) + "\n"


class NoGpu:
    def sample(self):
        from cockpit import gpus

        return gpus.Snapshot(False, "no NVML in this test", [], gpus.HostInfo(1.0, 1.0, 2.0, None), 0.0)


@pytest.mark.slow
@SETTINGS
@given(tables=registry_tables, bom=st.booleans())
def test_any_registry_loads_or_is_one_located_line_and_renders(tmp_path, tables, bom):
    path = tmp_path / "experiments.toml"
    text = toml_text(tables)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8", "surrogatepass"))
    for argv in (["status"], ["launch", "x", "--dry-run"]):  # the real CLI: exit 0 or 2, never a traceback
        assert cli.main(["--registry", str(path), *argv]) in (0, 2)
    try:
        r = registry.load(path)
    except registry.RegistryError as e:
        msg = str(e)
        assert "\n" not in msg and msg.startswith(str(path))
        return
    state = resume.build_state(r, sampler=NoGpu(), dirs=[])
    assert "\x1b" not in cli.safetext.printable(
        resume_text.render_status(state) + resume_text.render_guide(state)
    )
    for exp in r.experiments:
        for leg_ in exp.legs:
            leg_.argv(r.settings.exp_root / "x")
            resume.execution_template(r, leg_)


@SETTINGS
@given(text=st.text(max_size=300))
def test_any_text_as_a_registry_is_a_registry_or_one_line(tmp_path, text):
    try:
        registry.loads(text, tmp_path / "r.toml")
    except registry.RegistryError as e:
        assert "\n" not in str(e)


# ----------------------------------------------------------------------------------------------
# logs

HUGE = ["9" * 30, "1e999", "-1e999", "nan", "inf", "-0", "1" * 5000, "0x1F", "1_000", "١٢٣"]
num_text = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(2**80), 2**80).map(str),
    st.sampled_from(HUGE),
)


@st.composite
def step_line(draw) -> str:
    fields = [
        f"loss: {draw(num_text)}",
        f"dt: {draw(num_text)}ms",
        f"tok/sec: {draw(num_text)}",
        f"bf16_mfu: {draw(num_text)}",
        f"total time: {draw(num_text)}m",
        f"bal: {draw(num_text)}",
    ]
    kept = draw(st.lists(st.sampled_from(fields), max_size=6, unique=True))
    head = (
        f"step {draw(st.one_of(st.integers(0, 10**6).map(lambda i: f'{i:05d}'), num_text))}/{draw(num_text)}"
    )
    return " | ".join([head, *kept])


SGR = ["\x1b[32m", "\x1b[0m", "\x1b[1;31m", "\x1b[38;5;82m", "\x1b[K"]
HOSTILE = [
    "\x1b]0;TITLE\x07",
    "\x1b[2J",
    "\x1b]52;c;ZXZpbA==\x07",
    "\u202e",
    "\x00",
    "\x9b31m",
    "\x1b",
    "\x1b[",
]
other_line = st.one_of(
    st.sampled_from(
        [
            "Traceback (most recent call last):",
            '  File "x.py", line 1, in <module>',
            "RuntimeError: boom",
            "torch.OutOfMemoryError: CUDA out of memory.",
            "[rank0]: Traceback (most recent call last):",
            "Peak memory usage: 12.5MiB",
            "Total training time: 2.97m",
            "Step 00010 | Validation bpb: 0.8",
            "moe step 00001 | drop: 1.2% | load: 0.1,nan,inf | bal: 1.0",
            "usage: x [-h]",
            "x.py: error: unrecognized arguments: --bogus",
            "failed (exitcode: -9)",
        ]
    ),
    st.text(max_size=40),
)
decorated = st.builds(
    lambda pre, line, post: pre + line + post,
    st.sampled_from([""] + SGR + HOSTILE + ["[rank3]: "]),
    st.one_of(step_line(), other_line),
    st.sampled_from(["", *SGR, *HOSTILE, " "]),
)
log_bytes = st.one_of(
    st.builds(
        lambda lines, seps: "".join(ln + seps[i % len(seps)] for i, ln in enumerate(lines)).encode(
            "utf-8", "replace"
        ),
        st.lists(decorated, max_size=40),
        st.lists(st.sampled_from(["\n", "\r\n", "\r", "\n\n"]), min_size=1),
    ),
    st.binary(max_size=2000),
)


def clean(text: str) -> bool:
    return "\x1b" not in text and "\x07" not in text and "\u202e" not in text


@pytest.mark.slow
@SETTINGS
@given(data=log_bytes)
def test_any_log_summarizes_parses_and_reports_without_a_traceback(tmp_path, data):
    d = tmp_path / "d"
    d.mkdir(exist_ok=True)
    log = d / "run.log"
    log.write_bytes(data)
    s = logs.summarize(log)
    assert s.error is None and s.tail_n <= 50
    seen = []
    logs.parse_file(log, on_steps=lambda t: seen.append(len(t)))
    rows = report.rows(d)
    text = report_md.render(report.read_dir(d), rows, None)
    assert clean(safetext.printable(text)) and clean(text.replace("\\x", ""))
    out = report_files.write_report(d, plots=False)
    assert clean(out.read_text()) and clean((d / "report_summary.csv").read_text())
    for delta in report.delta_rows(rows[0], rows[0]):
        assert stats.fmt_pct(delta.delta_pct) in ("-", "+0.00%")


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-12)
    return a == b


@pytest.mark.slow
@SETTINGS
@given(data=log_bytes, tail=st.integers(1, 60))
@example(data=b"step 00001/0.0\nstep 00000/0.0\n", tail=1)  # a step 0 after the window: not in it
def test_the_backward_tail_reader_sees_what_the_whole_file_says(tmp_path, monkeypatch, data, tail):
    """A big log is read from its end; its window and failure are the same as when the whole
    file is parsed (while the window lies within the text budget). Final lines before the
    window's step lines are not read from the end, by design: they come after the last step."""
    log = tmp_path / "run.log"
    log.write_bytes(data)
    whole = logs.summarize(log, tail=tail)
    monkeypatch.setattr(summary, "SMALL_LOG_BYTES", 0)
    monkeypatch.setattr(summary, "TAIL_TEXT_BYTES", 1 << 20)
    assume(len(data) > 0)
    back = logs.summarize(log, tail=tail)
    monkeypatch.undo()
    for attr in ("tail_n", "tok_per_sec", "dt_ms", "mfu", "last_step", "last_loss", "error_line"):
        assert _same(getattr(back, attr), getattr(whole, attr)), (
            attr,
            getattr(back, attr),
            getattr(whole, attr),
        )


@pytest.mark.slow
@SETTINGS
@given(data=log_bytes, tail=st.integers(1, 60), budget=st.integers(1, 400))
@example(data=b"step 00001/0.0\nstep 00000/0.0\n", tail=1, budget=5)
def test_with_a_tiny_text_budget_the_window_is_still_the_whole_files(
    tmp_path, monkeypatch, data, tail, budget
):
    """The text budget exceeded: the window's step lines are found by the backward scan alone."""
    log = tmp_path / "run.log"
    log.write_bytes(data)
    whole = logs.summarize(log, tail=tail)
    assume(len(data) > 0)
    monkeypatch.setattr(summary, "SMALL_LOG_BYTES", 0)
    monkeypatch.setattr(summary, "TAIL_TEXT_BYTES", budget)
    back = logs.summarize(log, tail=tail)
    monkeypatch.undo()
    for attr in ("tail_n", "tok_per_sec", "dt_ms", "mfu", "last_step", "last_loss"):
        assert _same(getattr(back, attr), getattr(whole, attr)), (
            attr,
            getattr(back, attr),
            getattr(whole, attr),
        )


@SETTINGS
@given(data=st.binary(max_size=300), max_line=st.integers(1, 40), chunk=st.integers(1, 64))
def test_lines_read_backwards_are_the_lines_read_forwards(tmp_path, data, max_line, chunk):
    data = data.replace(b"\x1b", b"E")  # the splitter drops escapes; the raw reader leaves them to its caller
    chunk = max(chunk, max_line)
    sp = logs.LineSplitter(max_line=max_line)
    fwd = sp.feed_bytes(data) + ([sp.partial] if sp.partial else [])
    p = tmp_path / "b"
    p.write_bytes(data)
    with open(p, "rb") as f:
        back = [line for _, line in summary._lines_backwards(f, len(data), max_line=max_line, chunk=chunk)]
        wanted = [
            line
            for _, line in summary._lines_backwards(f, len(data), need=b"s", max_line=max_line, chunk=chunk)
        ]
    assert back[::-1] == fwd
    assert wanted[::-1] == [line for line in fwd if b"s" in line]


# ----------------------------------------------------------------------------------------------
# memory: a summary holds its window, whatever the file


@pytest.mark.slow
@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(pattern=st.lists(decorated, min_size=1, max_size=20), long_line=st.booleans())
def test_a_summary_stays_within_a_memory_bound_whatever_the_file(tmp_path, pattern, long_line):
    """Files of 4 MB made of a generated pattern (one line of 1 MB without a newline, maybe): the
    summary's peak allocation stays under 2 MB with a 256 KB text budget."""
    unit = ("\n".join(pattern) + "\n").encode("utf-8", "replace")
    p = tmp_path / "big.log"
    with open(p, "wb") as f:
        while f.tell() < 4 << 20:
            f.write(unit * max(1, (1 << 20) // len(unit)))
            if long_line:
                f.write(b"x" * (1 << 20))
    budget = 256 << 10
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(summary, "TAIL_TEXT_BYTES", budget)
        tracemalloc.start()
        try:
            s = logs.summarize(p)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert s.error is None
    # the text budget, the window's step lines (generated lines are short), a read chunk, slack
    assert peak < budget * 3 + follow.READ_CHUNK * 2 + (1 << 19), peak


def test_unreadable_and_odd_files_under_exp_root_never_raise(tmp_path):
    root = tmp_path / "exp"
    for i, make in enumerate(
        [
            lambda d: os.mkfifo(d / "plan.json"),
            lambda d: os.symlink("/dev/zero", d / "a.log"),
            lambda d: (d / "plan.json").write_bytes(os.urandom(3000)),
            lambda d: (d / "state").write_text("x"),
            lambda d: os.symlink(d, d / "state"),
            lambda d: (d / "plan.json").write_text(json.dumps({"experiment": [], "legs": {"a": 1}})),
        ]
    ):
        d = root / f"2026010{i}_000000_x"
        d.mkdir(parents=True)
        make(d)
    found = expdir.discover(root)
    assert len(found) >= 4
    for d in found:
        resume_text.dir_line(d)
    assert all(isinstance(d, expdir.ExpDir) for d in found) and Path(root).is_dir()
