"""The experiments tree: experiments, their legs with state marks, and the dirs they ran in."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from rich.text import Text
from textual.reactive import var
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from cockpit.tui import fmt
from cockpit.tui.state import DirView, ExperimentView, LegView
from cockpit.vocab import Mark

GLYPH = {
    Mark.RECORDED: ("✔", "green"),
    Mark.DONE: ("✔", "bold green"),
    Mark.RUNNING: ("▶", "bold cyan"),
    Mark.QUEUED: ("…", "cyan"),
    Mark.WAITING: ("⧗", "yellow"),
    Mark.FAILED: ("✘", "bold red"),
    Mark.STOPPED: ("■", "yellow"),
    Mark.PENDING: ("○", "dim"),
    Mark.UNKNOWN: ("?", "bold magenta"),  # may still run, and nothing may signal it: its note says why
}


@dataclass(frozen=True)
class Selection:
    """What a tree node stands for; the app acts on the node under the cursor."""

    kind: str  # "experiment", "leg", "dir", "dirleg"
    exp_id: str
    leg: str | None = None
    exp_dir: str | None = None


def mark(status: str) -> Text:
    glyph, style = GLYPH.get(status, ("?", "magenta"))
    return Text(f"{glyph} ", style=style)


def leg_label(leg: LegView) -> Text:
    text = mark(leg.mark)
    text.append(leg.name, style="bold" if leg.mark == Mark.RUNNING else "")
    if leg.baseline:
        text.append(" (baseline)", style="italic dim")
    text.append(f"  {leg.mark}", style=GLYPH.get(leg.mark, ("", ""))[1])
    if leg.job:
        text.append(f"  [Slurm {leg.job}]", style="cyan")
    if leg.gpus:
        text.append(f"  [{leg.gpus}]", style="cyan")
    if leg.note:
        text.append(f"  {leg.note}", style="red" if leg.mark == Mark.FAILED else "yellow")
    elif leg.figures.tok_per_sec is not None:
        text.append(f"  {fmt.num(leg.figures.tok_per_sec, 0, comma=True)} tok/s", style="dim")
    return text


def experiment_label(exp: ExperimentView) -> Text:
    counts = Counter(leg.mark for leg in exp.legs)
    text = Text(exp.id, style="bold")
    where = "cpu" if exp.device == "cpu" else f"{exp.gpus_needed} GPUs"
    if exp.executor == "slurm":
        where += " per node, on Slurm" if exp.device != "cpu" else ", on Slurm"
    text.append(f"  [{where}]", style="dim")
    parts = [f"{n} {m}" for m, n in counts.items()]
    if parts:
        text.append("  " + ", ".join(parts), style="dim")
    return text


def dir_label(d: DirView) -> Text:
    counts = Counter(x.status for x in d.legs)
    text = Text(d.name, style="blue")
    text.append("  " + (", ".join(f"{n} {m}" for m, n in counts.items()) or "no legs"), style="dim")
    if d.problem:
        text.append(f"  ⚠ {d.problem}", style="bold red")
    return text


def dirleg_label(status: str, name: str, job: str | None = None) -> Text:
    text = mark(status)
    text.append(f"{name}  {status}")
    if job:
        text.append(f"  [Slurm {job}]", style="cyan")
    return text


class ExperimentTree(Tree[Selection]):
    """The registry as a tree; rebuilt only when its shape changes, relabelled otherwise."""

    ICON_NODE = "+ "  # not the default triangles: ▶ marks a running leg here
    ICON_NODE_EXPANDED = "- "

    experiments: var[tuple[ExperimentView, ...]] = var((), init=False)

    def __init__(self, **kwargs) -> None:
        super().__init__("experiments", **kwargs)
        self.show_root = False
        self.guide_depth = 2
        self._shape: tuple = ()
        self._by_sel: dict[Selection, TreeNode[Selection]] = {}

    def node_for(self, sel: Selection) -> TreeNode[Selection] | None:
        """The node that stands for `sel`, if the tree has one."""
        return self._by_sel.get(sel)

    def watch_experiments(self, experiments: tuple[ExperimentView, ...]) -> None:
        shape = tuple(
            (
                e.id,
                tuple(leg.name for leg in e.legs),
                tuple((d.path, tuple(x.name for x in d.legs)) for d in e.dirs),
            )
            for e in experiments
        )
        if shape != self._shape:
            self._rebuild(experiments)
            self._shape = shape
            return
        for exp in experiments:
            self._relabel(Selection("experiment", exp.id), experiment_label(exp))
            for leg in exp.legs:
                self._relabel(Selection("leg", exp.id, leg.name), leg_label(leg))
            for d in exp.dirs:
                self._relabel(Selection("dir", exp.id, exp_dir=d.path), dir_label(d))
                for x in d.legs:
                    self._relabel(
                        Selection("dirleg", exp.id, x.name, d.path), dirleg_label(x.status, x.name, x.job)
                    )

    def _relabel(self, sel: Selection, label: Text) -> None:
        node = self._by_sel.get(sel)
        if node is not None and node.label != label:
            node.set_label(label)

    def _rebuild(self, experiments: tuple[ExperimentView, ...]) -> None:
        expanded = {sel for sel, node in self._by_sel.items() if node.is_expanded}
        known = set(self._by_sel)
        cursor = self.cursor_node.data if self.cursor_node is not None else None
        self.clear()
        self._by_sel = {}
        for exp in experiments:
            sel = Selection("experiment", exp.id)
            enode = self.root.add(experiment_label(exp), data=sel)
            self._by_sel[sel] = enode
            for leg in exp.legs:
                lsel = Selection("leg", exp.id, leg.name)
                self._by_sel[lsel] = enode.add_leaf(leg_label(leg), data=lsel)
            for d in exp.dirs:
                dsel = Selection("dir", exp.id, exp_dir=d.path)
                dnode = enode.add(dir_label(d), data=dsel)
                self._by_sel[dsel] = dnode
                for x in d.legs:
                    xsel = Selection("dirleg", exp.id, x.name, d.path)
                    self._by_sel[xsel] = dnode.add_leaf(dirleg_label(x.status, x.name, x.job), data=xsel)
                if dsel in expanded:
                    dnode.expand()
            # Experiments open by default: the legs and their marks are the point of the screen.
            if sel not in known or sel in expanded:
                enode.expand()
        # Tree lines are laid out on the next refresh: put the cursor back after it.
        if cursor is not None and cursor in self._by_sel:
            self.call_after_refresh(self._restore, self._by_sel[cursor])
        elif not known and self._by_sel:
            self.call_after_refresh(self._restore, next(iter(self._by_sel.values())))  # the first experiment

    def _restore(self, node: TreeNode[Selection]) -> None:
        if self.cursor_line < 0:  # unless the reader has moved since the rebuild
            self.move_cursor(node)

    @property
    def selection(self) -> Selection | None:
        node = self.cursor_node
        return node.data if node is not None else None
