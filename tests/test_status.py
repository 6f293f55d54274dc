"""`cockpit status` and `cockpit resume`: the resume state through the CLI."""


from metrics_util import NOW, bundled_registry, make_dir

from cockpit import cli


def run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_status_of_the_bundled_registry(tmp_path, capsys):
    bundled_registry(tmp_path)
    code, out, err = run(capsys, "status", "--registry", str(tmp_path / "experiments.toml"))
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == f"nanochat moe-fp8  ({tmp_path}/experiments.toml)"
    assert lines[2].startswith("GPUs: ")  # idle/busy from NVML, or unknown (NVML unavailable: ...) here
    assert "running: none (training paused)" in lines
    assert "moe-fp8-capacity-ablation-v1  [8 GPUs]  5 recorded" in lines
    assert "  static_cap1p0           recorded  785203.42 tok/s, mfu 9.5014  [recorded]" in lines
    assert "cpu-smoke  [cpu]  3 pending" in lines
    assert lines[-1] == (
        "next: moe-fp8-capacity-opt-v3/moe_fp8_experts_static_cap1p0_v3  ->  cockpit launch "
        f"moe-fp8-capacity-opt-v3 --legs moe_fp8_experts_static_cap1p0_v3 --registry {tmp_path}/experiments.toml"
    )
    assert len(lines) < 30


def test_status_shows_running_and_done_legs(tmp_path, capsys):
    registry = bundled_registry(tmp_path)
    make_dir(registry.settings.exp_root, "20261126_043113_cpu-smoke",
             {"dense": ("done", "cpu-smoke/dense.log"), "moe_dropless": ("running", "cpu-smoke/moe_dropless.log"),
              "moe_cap1p0": ("queued", None)}, supervisor=True, mtime=NOW)
    code, out, _ = run(capsys, "status", "--registry", str(registry.path))
    assert code == 0
    assert "running: cpu-smoke/moe_dropless  step 39/40 (100.0%), loss 1.6702, 5,940 tok/s" in out
    assert "cpu-smoke  [cpu]  1 done, 1 running, 1 queued" in out
    assert "  dense         done      9744.48 tok/s, mfu 0.0000  (baseline)" in out


def test_resume_to_stdout_and_file(tmp_path, capsys):
    registry = bundled_registry(tmp_path)
    code, out, _ = run(capsys, "resume", "--registry", str(registry.path))
    assert code == 0 and out.startswith("# Nanochat Resume Guide\n") and "## Remaining Work" in out
    target = tmp_path / "guides" / "guide.md"
    code, out, _ = run(capsys, "resume", "--registry", str(registry.path), "--out-md", str(target))
    assert code == 0 and out.strip() == str(target) and "## Safety/Path Constraints Reminder" in target.read_text()
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")]  # no temp file left


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[project]\nexp_root = 3\n")
    for argv in (["status", "--registry", str(bad)], ["resume", "--registry", str(bad)],
                 ["status", "--registry", str(tmp_path / "missing.toml")]):
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("cockpit: ")
    registry = bundled_registry(tmp_path)
    code, _, err = run(capsys, "resume", "--registry", str(registry.path), "--out-md", str(tmp_path))
    assert code == 2 and "is a directory" in err and err.count("\n") == 1
