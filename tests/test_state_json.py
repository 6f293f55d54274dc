"""`cockpit status --json` and `cockpit resume --json`: the one resume state as a versioned JSON document."""

import json
import re

from helpers import bundled_registry, make_dir

from cockpit import cli, expdir, resume, resume_text, state_json, stats
from cockpit.vocab import METRICS, QUALITY


def run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def legs_of(doc: dict) -> dict[str, dict]:
    return {leg["ref"]: leg for e in doc["experiments"] for leg in e["legs"]}


def test_status_json_is_the_state_the_text_renders(tmp_path, capsys):
    registry = bundled_registry(tmp_path)
    root = registry.settings.exp_root
    done = make_dir(
        root,
        "20261126_010000_cpu-smoke",
        {"dense": ("done", "cpu-smoke/dense.log"), "moe_cap1p0": ("done", "cpu-smoke/moe_cap1p0.log")},
    )
    live = make_dir(
        root,
        "20261126_043113_cpu-smoke",
        {"moe_dropless": ("running", "cpu-smoke/moe_dropless.log")},
        supervisor=True,
    )
    log = live / "moe_dropless.log"  # halfway: the log ends at step 20
    lines = log.read_text().splitlines(keepends=True)
    log.write_text(
        "".join(lines[: next(i for i, ln in enumerate(lines) if ln.startswith("step 00020/")) + 1])
    )

    code, out, err = run(capsys, "status", "--json", "--registry", str(registry.path))
    assert code == 0 and err == ""
    doc = json.loads(out)
    assert doc["schema"] == state_json.SCHEMA == 1
    assert (doc["project"], doc["registry"], doc["exp_root"], doc["tail"]) == (
        "nanochat moe-fp8",
        str(registry.path),
        str(root),
        50,
    )
    legs = legs_of(doc)
    state = resume.build_state(registry)
    assert {ref: leg["mark"] for ref, leg in legs.items()} == {m.ref: str(m.mark) for m in state.marks()}
    assert doc["activity"] == state.activity and doc["running"] == doc["active"] == ["cpu-smoke/moe_dropless"]
    assert doc["gpus"]["state"] == state.gpus.state and doc["gpus"]["text"] == state.gpus.text

    running = legs["cpu-smoke/moe_dropless"]
    assert running["dir"] == str(live) and running["log"] == str(log)
    assert running["pid"] == expdir.read_state(live, "moe_dropless").pid
    assert running["progress"]["step"] == 20 and running["progress"]["total"] == 40

    dense, cap = legs["cpu-smoke/dense"], legs["cpu-smoke/moe_cap1p0"]
    assert dense["baseline"] is True and dense["delta"] is None  # the baseline is not compared with itself
    assert set(dense["figures"]) == {"source", "repeats", *METRICS, *QUALITY}
    assert dense["figures"]["source"] == "log" and round(dense["figures"]["tok_per_sec"], 2) == 9691.74
    # the delta the text says (`Δ -x% ±y% verdict vs dense`) is the document's
    delta = cap["delta"]
    assert (delta["vs"], delta["dir"], delta["source"]) == ("dense", str(done), None)
    tok = delta["metrics"]["tok_per_sec"]
    text = next(ln for ln in resume_text.render_status(state).splitlines() if ln.startswith("  moe_cap1p0 "))
    assert f"Δ {stats.fmt_pct(tok['pct'])} {stats.fmt_ci(tok['ci_pct'])} {tok['verdict']} vs dense" in text
    assert set(delta["metrics"]) >= set(METRICS)

    assert [d["path"] for d in doc["dirs"]] == [str(done), str(live)]
    assert doc["dirs"][1]["legs"] == {"moe_dropless": "running"}
    for key, nxt in (("next", state.next), ("next_elsewhere", state.next_elsewhere)):
        want = None if nxt is None else {"leg": nxt.leg, "command": nxt.command, "cockpit": nxt.cockpit}
        assert (doc[key] and {k: doc[key][k] for k in ("leg", "command", "cockpit")}) == want, key
    assert doc["next"] or doc["next_elsewhere"]  # the 8-GPU leg is still to run


def test_resume_json_is_the_same_document(tmp_path, capsys):
    registry = bundled_registry(tmp_path)
    _, status, _ = run(capsys, "status", "--json", "--registry", str(registry.path))
    code, out, err = run(capsys, "resume", "--json", "--registry", str(registry.path))
    assert code == 0 and err == ""
    a, b = json.loads(status), json.loads(out)
    a.pop("generated"), b.pop("generated")
    assert a == b and b["next"]["cockpit"].startswith("cockpit launch ")
    assert b["safety"] == resume.safety_lines(registry)
    # --json prints, --out-md writes: asked together, one line and exit 2, nothing written
    code, out, err = run(
        capsys, "resume", "--json", "--out-md", str(tmp_path / "g.md"), "--registry", str(registry.path)
    )
    assert (code, out) == (2, "") and err.count("\n") == 1 and "--json" in err
    assert not (tmp_path / "g.md").exists()


def test_text_from_a_log_reaches_the_terminal_escaped_and_non_finite_figures_are_null(tmp_path, capsys):
    registry = bundled_registry(tmp_path)
    d = registry.settings.exp_root / "20261126_060000_cpu-smoke"
    d.mkdir(parents=True)
    # a manual run whose error line holds a bell and a bidi override, and whose figures are inf and nan
    (d / "dense.log").write_text(
        "step 00001/00040 (2.50%) | loss: nan | dt: 10.00ms | tok/sec: inf | bf16_mfu: 0.00\n"
        "Traceback (most recent call last):\n"
        "RuntimeError: bad \x07 \u202e value\n"
    )
    code, out, _ = run(capsys, "status", "--json", "--registry", str(registry.path))
    assert code == 0 and out.isascii()
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f]", out)  # newlines only
    assert "\\u0007" in out and "\\u202e" in out
    leg = legs_of(json.loads(out))["cpu-smoke/dense"]
    assert (
        leg["mark"] == "failed" and leg["note"] == "RuntimeError: bad \x07 \u202e value"
    )  # the text as the file has it
    assert leg["figures"]["tok_per_sec"] is None and leg["progress"]["loss"] is None
