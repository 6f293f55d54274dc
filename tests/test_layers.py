"""The cockpit's layers, read from its source with ast: each module imports only from its own layer
or below (function-level imports counted), no import cycle, the cockpit never imports torch,
nanochat never imports the cockpit, and a function-level import is a heavy library, said why."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Every module of the cockpit, by layer (see ARCHITECTURE.md). A new module must be placed here.
LAYERS = {
    0: [
        "cockpit",
        "cockpit.fsutil",
        "cockpit.procs",
        "cockpit.scheduler",
        "cockpit.sbatch_opts",
        "cockpit.safetext",
        "cockpit.stats",
        "cockpit.vocab",
        "cockpit.figures",
        "cockpit.lazy",
        "cockpit.numtext",
        "cockpit.pipes",
        "cockpit.checkout",
        "cockpit.flags",
        "cockpit.registry",
        "cockpit.toml_lines",
        "cockpit.schema",
        "cockpit.names",
        "cockpit.grid",
        "cockpit.slurm_policy",
        "cockpit.logs",
        "cockpit.logs.lines",
        "cockpit.logs.failure",
        "cockpit.logs.state",
        "cockpit.logs.follow",
        "cockpit.logs.summary",
        "cockpit.logs.full",
        "cockpit.logs.progress",
    ],
    1: [
        "cockpit.plan",
        "cockpit.gpus",
        "cockpit.expdir",
        "cockpit.provenance",
        "cockpit.trainer_flags",
        "cockpit.leg_log",
    ],
    2: [
        "cockpit.baseline",
        "cockpit.export",
        "cockpit.plots",
        "cockpit.step_files",
        "cockpit.report",
        "cockpit.report_md",
        "cockpit.report_files",
        "cockpit.supervisor",
        "cockpit.executors",
        "cockpit.executors.local",
        "cockpit.executors.slurm",
        "cockpit.executors.slurm_record",
        "cockpit.executors.resubmit",
    ],
    3: [
        "cockpit.launch",
        "cockpit.resume",
        "cockpit.resume_text",
        "cockpit.continuation",
        "cockpit.state_json",
    ],
    4: ["cockpit.cli", "cockpit.tui"],  # and every module of cockpit.tui
}
# What a function may import (a heavy library, loaded only by what needs it), with a comment saying why.
FUNCTION_LEVEL = {"numpy", "matplotlib", "cockpit.tui.app", "tensorboard"}


def modules(package: str) -> dict[str, Path]:
    out = {}
    for f in sorted((REPO / package).rglob("*.py")):
        name = ".".join(f.relative_to(REPO).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(module imported, line, inside a function) of every import of a file."""
    tree = ast.parse(path.read_text())
    out = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                out.append((child.module, child.lineno, in_function))
                out.extend((f"{child.module}.{a.name}", child.lineno, in_function) for a in child.names)
            visit(child, inner)

    visit(tree, False)
    return out


def layer_of(module: str) -> int:
    for layer, names in LAYERS.items():
        if module in names or (module.startswith("cockpit.tui.") and "cockpit.tui" in names):
            return layer
    raise AssertionError(f"{module} has no layer: add it to LAYERS (and to ARCHITECTURE.md)")


def graph() -> dict[str, set[str]]:
    """cockpit module -> the cockpit modules it imports (function-level imports counted)."""
    mods = modules("cockpit")
    out: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        for target, _, _ in imports(f):
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != m and target != "cockpit":
                out[m].add(target)
    return out


@pytest.mark.slow
def test_every_module_imports_only_its_own_layer_or_below():
    g = graph()
    wrong = [
        f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
        for m, targets in g.items()
        for t in targets
        if layer_of(t) > layer_of(m)
    ]
    assert not wrong, wrong


@pytest.mark.slow
def test_no_import_cycle():
    g = graph()
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def walk(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(g[m]):
            assert state.get(t) != 1, "import cycle: " + " -> ".join([*path, m, t])
            if t not in state:
                walk(t, [*path, m])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            walk(m, [])


@pytest.mark.slow
def test_the_cockpit_never_imports_torch_and_nanochat_never_imports_the_cockpit():
    for m, f in modules("cockpit").items():
        assert not [t for t, _, _ in imports(f) if t == "torch" or t.startswith("torch.")], m
    for m, f in modules("nanochat").items():
        assert not [t for t, _, _ in imports(f) if t == "cockpit" or t.startswith("cockpit.")], m


@pytest.mark.slow
def test_function_level_imports_are_heavy_libraries_and_say_why():
    seen = set()
    for m, f in modules("cockpit").items():
        lines = f.read_text().splitlines()
        for target, line, in_function in imports(f):
            if not in_function:
                continue
            parts = target.split(".")
            root = next(
                (
                    ".".join(parts[:i])
                    for i in range(len(parts), 0, -1)
                    if ".".join(parts[:i]) in FUNCTION_LEVEL
                ),
                target,
            )
            assert root in FUNCTION_LEVEL, f"{m}:{line} imports {target} inside a function"
            top = line - 1  # the comment: on the line, or above the block of imports it starts
            while top > 0 and lines[top - 1].strip().startswith(("import ", "from ")):
                top -= 1
            said = lines[max(0, top - 1) : line]
            assert any("#" in s and "function-level" in s for s in said), (
                f"{m}:{line}: say why {target} is imported here"
            )
            seen.add(root)
    assert seen == FUNCTION_LEVEL  # each exception is still needed
