"""The cockpit's main screen: the layout, the keys, and what they do.

The collector (collector.py) runs in a thread worker of this screen and posts each new view and
the new log lines as messages (messages.py). Their handlers set this screen's reactive view
models, and the watchers hand each widget its part; a widget repaints only when its part changed.
Keys that act (launch, stop, write a report or the guide) run the core in thread workers, which
answer with messages too: the UI thread never waits on a file or a process. Closing the cockpit
never touches a leg: the supervisors are detached processes.

Log tabs: a running leg gets a tab, brought to the front when the leg is first seen running, and
keeps it after it ends until the reader closes it (`x` closes the tab in front); the selection (a
leg: its newest attempt; a dir: its running or last leg) has one more tab, which follows the
selection. Tabs stand grouped by dir, oldest first. Every message that asks for a key names it, as `[l]`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.reactive import var
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Tree
from textual.worker import get_current_worker

from cockpit import continuation, fsutil, launch
from cockpit import registry as reg
from cockpit.expdir import RunError
from cockpit.report_files import write_report
from cockpit.resume_text import GUIDE_NAME, guide_path, write_guide
from cockpit.tui import fmt
from cockpit.tui.collector import Collector
from cockpit.tui.commands import BindingCommands
from cockpit.tui.confirm import Choice, ConfirmScreen
from cockpit.tui.diff_screen import DiffScreen
from cockpit.tui.experiments import GLYPH, ExperimentTree, Selection
from cockpit.tui.final_table import FinalPane
from cockpit.tui.gpu_panel import GpuBox, GpuPanel
from cockpit.tui.header import CockpitHeader
from cockpit.tui.live_table import LiveTable
from cockpit.tui.log_panes import LogPanes
from cockpit.tui.messages import LaunchPlanned, LogLines, Notice, ViewPublished
from cockpit.tui.path_prompt import PathPrompt
from cockpit.tui.resume_panel import ResumeBox
from cockpit.tui.state import CockpitView, LegView, ReportView
from cockpit.vocab import ACTIVE_STATUSES, ENDED_STATUSES, Status

MAX_KEPT_TABS = 12  # tabs of legs that ran while the cockpit watched; the oldest ended ones go first
CONTINUE = "continue"  # the launch dialog's answer when the reader continues in the newest dir
Tab = tuple[str, str, str]  # (key `exp_dir/leg`, leg name, log path)


class MainScreen(Screen[None]):
    # Classes the screen gets by its size: the stylesheet gives a narrow or short terminal its layout.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (36, "-tall")]
    # The one list of keys: the footer shows those with show=True, `?` opens Textual's keys panel
    # (description and tooltip of each), and the command palette offers each by its description.
    BINDINGS = [
        Binding(
            "l",
            "launch_leg",
            "Launch leg",
            tooltip="Launch the selected leg (confirm [y]; a done leg asks for an explicit re-run with [R])",
        ),
        Binding(
            "L",
            "launch_all",
            "Launch remaining",
            tooltip="Launch all remaining legs of the selected experiment (confirm [y]), or continue in its "
            "newest dir when that has legs still to run ([c]); when every leg is done, re-run the "
            "whole experiment in a fresh dir (confirm [R])",
        ),
        Binding(
            "s",
            "stop",
            "Stop",
            tooltip="Stop the selected running leg, or the queue of the selected dir (confirm)",
        ),
        Binding("question_mark", "toggle_keys", "Keys", tooltip="Show / hide this list of keys"),
        Binding(
            "slash",
            "find('search')",
            "Search log",
            tooltip="Search the current log: every match highlighted; [n] / [N] next / previous match",
        ),
        Binding(
            "ampersand",
            "find('filter')",
            "Filter log",
            tooltip="Show only the lines of the current log that hold a text (empty: every line)",
        ),
        Binding(
            "n",
            "next_match(1)",
            "Next match",
            show=False,
            tooltip="The next (newer) line matching the search",
        ),
        Binding(
            "N",
            "next_match(-1)",
            "Previous match",
            show=False,
            tooltip="The previous (older) line matching the search",
        ),
        Binding(
            "w",
            "toggle_wrap",
            "Wrap",
            show=False,
            tooltip="Wrap long log lines on/off (off: ← → scroll sideways to a step line's total time and eta)",
        ),
        Binding("x", "close_tab", "Close log tab", show=False, tooltip="Close the current log tab"),
        Binding(
            "c",
            "copy_next",
            "Copy next",
            tooltip="Copy the next leg's command (the resume panel's) to the clipboard",
        ),
        Binding(
            "d",
            "show_diff",
            "Diff flags",
            tooltip="The flags of the selected leg that differ from its baseline's (or another leg's)",
        ),
        Binding("r", "write_report", "Report", tooltip="Write the report of the selected experiment dir"),
        Binding(
            "g",
            "write_guide",
            "Resume guide",
            tooltip=f"Write the resume guide: asks where (default <exp_root>/{GUIDE_NAME})",
        ),
        Binding(
            "f",
            "toggle_follow",
            "Follow",
            tooltip="Follow the current log on/off (scrolling up pauses it too)",
        ),
        Binding("m", "toggle_maximize", "Maximize", tooltip="Maximize the focused pane / restore"),
        Binding(
            "left_square_bracket",
            "cycle_tab(-1)",
            "Previous log tab",
            show=False,
            tooltip="Bring the previous leg's log to the front",
        ),
        Binding(
            "right_square_bracket",
            "cycle_tab(1)",
            "Next log tab",
            show=False,
            tooltip="Bring the next leg's log to the front",
        ),
        Binding("tab", "app.focus_next", "Next pane", show=False, tooltip="Move the focus to the next pane"),
        Binding(
            "shift+tab",
            "app.focus_previous",
            "Previous pane",
            show=False,
            tooltip="Move the focus to the previous pane",
        ),
        Binding("q", "app.quit", "Quit", tooltip="Quit the cockpit (running legs go on)"),
    ]
    COMMANDS = {BindingCommands}

    # The latest results of the collector, set by the message handlers; the watchers pass them on.
    view: var[CockpitView | None] = var(None, init=False)
    error: var[str | None] = var(None, init=False)  # the registry's error, or the collector's
    report: var[ReportView | None] = var(None, init=False)
    selection: var[Selection | None] = var(None, init=False)  # the tree node under the cursor

    def __init__(
        self, collector: Collector, *, poll_s: float = 0.25, refresh_s: float = 0.5, max_log_lines: int = 2000
    ) -> None:
        super().__init__()
        self.collector = collector
        self.poll_s = poll_s
        self.refresh_s = refresh_s
        self.max_log_lines = max_log_lines
        self.finished: list[str] = []  # `exp_dir/leg:status` of each leg announced as finished
        self.kept: dict[str, Tab] = {}  # tabs of legs seen running, kept after they end until closed
        self.closed: set[str] = set()  # keys the reader closed: not reopened because the leg runs
        self.preview: Tab | None = None  # the selection's log, when it is not a kept tab

    # ------------------------------------------------------------------------------------------
    # layout

    def compose(self) -> ComposeResult:
        yield CockpitHeader(id="header")
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield ExperimentTree(id="experiments")
                yield ResumeBox(id="resume-box")
            with Vertical(id="right"):
                with GpuBox(id="gpus"):
                    yield GpuPanel(id="gpu-lines")
                yield LiveTable(id="live")
                yield FinalPane(id="final")
                yield LogPanes(id="logs", max_lines=self.max_log_lines)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#experiments").border_title = "Experiments"
        self.query_one("#resume-box").border_title = "Resume"
        self.query_one("#gpus").border_title = "GPUs"
        self.query_one(ExperimentTree).focus()
        self._collect()

    def on_unmount(self) -> None:
        self.collector.stop()

    @work(thread=True, exclusive=True, group="collector", exit_on_error=False)
    def _collect(self) -> None:
        worker = get_current_worker()
        self.collector.run(
            self.post_message, lambda: worker.is_cancelled, period=self.poll_s, post_every=self.refresh_s
        )

    # ------------------------------------------------------------------------------------------
    # what the collector posts

    def on_view_published(self, message: ViewPublished) -> None:
        self.error = message.error
        self.view = message.view
        self.report = message.report

    def on_log_lines(self, message: LogLines) -> None:
        self.query_one(LogPanes).append(message.lines)

    def watch_error(self, error: str | None) -> None:
        if error:
            self.notify(error, title="registry", severity="error", timeout=10)
        self._show_state()

    def watch_report(self, report: ReportView | None) -> None:
        self.query_one(FinalPane).report = report

    def watch_view(self, old: CockpitView | None, view: CockpitView | None) -> None:
        self._show_state()
        if view is None:  # the registry cannot be loaded: the rest keeps what it showed
            return
        tree = self.query_one(ExperimentTree)
        tree.experiments = view.experiments
        if self.selection is None and tree.selection is not None:
            self.selection = tree.selection
        self.query_one(GpuPanel).gpu = view.gpu
        live = self.query_one(LiveTable)
        live.tail = view.tail
        live.live = view.live
        if old is not None:
            self.announce(old, view)
        self.sync_tabs()

    def _show_state(self) -> None:
        """The header and the resume panel: the view, or the registry's error while there is none."""
        view, error = self.view, self.error
        header = self.query_one(CockpitHeader)
        header.headline = view.headline if view is not None else None
        header.error = error
        self.query_one(ResumeBox).show(
            view.resume if view is not None else None,
            view.errors + ((error,) if error else ()) if view is not None else (),
            error if view is None else None,
        )

    def announce(self, old: CockpitView, new: CockpitView) -> None:
        """A notification and the terminal bell when a leg finishes or fails."""
        before = old.leg_marks()
        for key, status in new.leg_marks().items():
            # a leg that leaves the active statuses for an ended one has finished: it is announced
            if before.get(key) in ACTIVE_STATUSES and status in ENDED_STATUSES:
                leg = Path(key).name
                severity = "information" if status == Status.DONE else "error"
                self.notify(
                    f"{leg} {status} ({Path(key).parent.name}); its log tab stays until [x] closes it",
                    title=f"leg {status}",
                    severity=severity,
                )
                self.app.bell()
                self.finished.append(f"{key}:{status}")

    # ------------------------------------------------------------------------------------------
    # selection and log tabs

    def sync_tabs(self) -> None:
        """The log tabs: the kept ones (a tab per leg seen running, until closed) and the
        selection's, grouped by dir (oldest dir first, by its stamped name; a dir's legs in its
        plan's order); the collector follows exactly these. A leg seen running for the first time
        comes to the front."""
        view = self.view
        if view is None:
            return
        started = [v.key for v in view.live if v.key not in self.kept and v.key not in self.closed]
        for v in view.live:
            if v.key in started:
                self.kept[v.key] = (v.key, v.leg, v.log)
        running = {v.key for v in view.live}
        while len(self.kept) > MAX_KEPT_TABS:
            old = next((k for k in self.kept if k not in running), None)
            if old is None:
                break
            del self.kept[old]
        tabs = list(self.kept.values())
        if self.preview is not None and self.preview[0] not in self.kept:
            tabs.append(self.preview)
        place = {
            f"{d.path}/{x.name}": (d.name, j)
            for e in view.experiments
            for d in e.dirs
            for j, x in enumerate(d.legs)
        }
        # by dir (a stamped name: oldest first), a dir's legs in plan order; a log no dir lists goes last
        tabs.sort(key=lambda t: place.get(t[0], ("\uffff", 0)))
        panes = self.query_one(LogPanes)
        dirs = list(dict.fromkeys(Path(k).parent.name for k, _, _ in tabs))
        panes.sync([(k, self.tab_title(k, leg, dirs), p) for k, leg, p in tabs])
        if started:
            panes.select(started[-1])
        self.collector.request = dataclasses.replace(
            self.collector.request, tabs=tuple((k, p) for k, _, p in tabs)
        )

    def tab_title(self, key: str, leg: str, dirs: list[str]) -> str:
        """`✔ leg`: the leg's status glyph; with tabs of more than one dir among `dirs`, its dir's
        stamp too (`✔ dense · 17:54:12`), so each group reads as its dir."""
        status = self.view.leg_marks().get(key) if self.view else None
        glyph = GLYPH.get(status, ("", ""))[0] if status else ""
        title = f"{glyph} {leg}" if glyph else leg
        if len(dirs) > 1:
            title += f" · {fmt.dir_tag(Path(key).parent.name, dirs)}"
        return title

    def selected_log(self) -> Tab | None:
        """(key, leg, path) of the selection's log: a leg's newest attempt here (the run just
        stopped, even when an older dir holds the one that counts as done), a dir's running or
        last leg; None when it has none."""
        sel, view = self.selection, self.view
        if sel is None or view is None:
            return None
        exp = view.experiment(sel.exp_id)
        if exp is None:
            return None
        if sel.kind == "dirleg" and sel.exp_dir and sel.leg:
            return (f"{sel.exp_dir}/{sel.leg}", sel.leg, str(Path(sel.exp_dir) / f"{sel.leg}.log"))
        if sel.kind == "dir" and sel.exp_dir:
            d = next((d for d in exp.dirs if d.path == sel.exp_dir), None)
            x = d.log_leg() if d is not None else None
            return (f"{d.path}/{x.name}", x.name, x.log) if x is not None else None
        if sel.kind == "leg" and sel.leg:
            found = exp.latest_attempt(sel.leg)
            if found is not None:
                d, x = found
                return (f"{d.path}/{x.name}", x.name, x.log)
            leg = exp.leg(sel.leg)  # a run here that no dir lists (a manual run's log)
            if leg is not None and leg.exp_dir and leg.log:
                return (f"{leg.exp_dir}/{leg.name}", leg.name, leg.log)
        return None

    def selected_leg(self) -> LegView | None:
        sel, view = self.selection, self.view
        if sel is None or view is None or sel.leg is None:
            return None
        exp = view.experiment(sel.exp_id)
        return exp.leg(sel.leg) if exp else None

    def on_tree_node_highlighted(self, event: Tree.NodeHighlighted) -> None:
        if isinstance(event.node.data, Selection):
            self.selection = event.node.data

    def watch_selection(self, sel: Selection | None) -> None:
        if sel is None:
            return
        report_dir = sel.exp_dir
        if report_dir is None and sel.kind == "leg":  # a leg: the dir of its latest run here
            leg = self.selected_leg()
            report_dir = leg.exp_dir if leg is not None else None
        self.collector.request = dataclasses.replace(
            self.collector.request, report_dir=report_dir, report_exp=sel.exp_id
        )
        self.collector.poke()
        tab = self.selected_log()
        self.preview = tab
        if tab is not None:
            self.closed.discard(tab[0])
        self.sync_tabs()
        if tab is not None:
            self.query_one(LogPanes).select(tab[0])

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """A live row under the cursor brings its leg's log tab to the front, when the reader moves
        the cursor (the table focused): a refresh of its rows (a leg ended) moves no tab."""
        table = event.data_table
        if table.id == "live" and table.has_focus and event.row_key is not None and event.row_key.value:
            self.query_one(LogPanes).select(event.row_key.value)

    # ------------------------------------------------------------------------------------------
    # keys that show

    def action_cycle_tab(self, step: int) -> None:
        self.query_one(LogPanes).cycle(step)

    def current_log(self):
        """The log pane in front, or None (with a notification that says how to get one)."""
        v = self.query_one(LogPanes).current()
        if v is None:
            self.notify(
                "no log open: select a leg or a dir that has a log (the experiments tree)", severity="warning"
            )
        return v

    def action_toggle_follow(self) -> None:
        v = self.current_log()
        if v is None:
            return
        v.set_following(not v.following)
        self.notify(f"{'following' if v.following else 'paused ([f] follows again)'}: {Path(v.path).name}")

    def action_find(self, mode: str) -> None:
        """`/` (search) or `&` (filter): the find bar of the log in front."""
        v = self.current_log()
        if v is not None:
            v.open_find(mode)

    def action_next_match(self, step: int) -> None:
        v = self.current_log()
        if v is None:
            return
        if not v.log.search:
            self.notify("no search in this log: [/] searches", severity="warning")
        elif not v.next_match(step):
            self.notify(
                f"no line matches {v.patterns['search']!r}"
                + (" among the filtered ones" if v.log.filter else ""),
                severity="warning",
            )

    def action_toggle_wrap(self) -> None:
        v = self.current_log()
        if v is not None:
            v.set_wrap(not v.log.wrap)

    def action_close_tab(self) -> None:
        """Close the log tab in front; a running leg's tab is not reopened while it runs."""
        key = self.query_one(LogPanes).current_key()
        if key is None:
            self.notify("no log tab to close", severity="warning")
            return
        self.kept.pop(key, None)
        self.closed.add(key)
        if self.preview is not None and self.preview[0] == key:
            self.preview = None
        self.sync_tabs()

    def action_copy_next(self) -> None:
        """The next leg's command, as the resume panel shows it, to the clipboard (the terminal's,
        through OSC 52: it works over ssh and in tmux with set-clipboard on)."""
        view = self.view
        command = view.resume.next_command if view is not None else None
        if not command:
            self.notify("no next command: every leg is done or running", severity="warning")
            return
        self.app.copy_to_clipboard(command)
        lines = command.count("\n") + 1
        self.notify(
            f"{view.resume.next_label}: {lines} lines ({len(command)} characters); paste them in a shell "
            "at the checkout",
            title="next command copied [c]",
        )

    def action_show_diff(self) -> None:
        """The flags of the selected leg that differ from its baseline's (or another leg's)."""
        sel, registry = self.selection, self.collector.registry
        if registry is None:
            self.notify(self.error or "the registry is not loaded", severity="error")
            return
        leg = registry.find_leg(f"{sel.exp_id}/{sel.leg}") if sel is not None and sel.leg else None
        if leg is None:
            self.notify("select a leg first (the experiments tree), then [d]", severity="warning")
            return
        self.app.push_screen(DiffScreen(registry, leg, registry.baseline_of(leg)))

    def action_toggle_maximize(self) -> None:
        if self.maximized is not None:
            self.minimize()
        elif self.focused is None or not self.maximize(self.focused):
            self.notify("focus a pane first ([tab]), then [m]", severity="warning")

    def action_toggle_keys(self) -> None:
        """Textual's keys panel, beside the screen: every binding with its tooltip."""
        if self.query("HelpPanel"):
            self.app.action_hide_help_panel()
        else:
            self.app.action_show_help_panel()

    def closing_line(self) -> str:
        """What the terminal says once the cockpit has closed."""
        running = len(self.view.live) if self.view else 0
        if not running:
            return "cockpit closed; legs are never touched by closing it"
        legs = "1 running leg goes on" if running == 1 else f"{running} running legs go on"
        return f"cockpit closed; {legs} (detached; closing the cockpit never touches a leg)"

    # ------------------------------------------------------------------------------------------
    # what the action workers post

    def on_notice(self, message: Notice) -> None:
        kwargs = {} if message.timeout is None else {"timeout": message.timeout}
        self.notify(message.message, title=message.title, severity=message.severity, **kwargs)

    def _fail(self, title: str, e: Exception) -> None:
        """An action that failed, from a worker: one line in a notification."""
        if isinstance(e, (RunError, reg.RegistryError)):
            text = str(e)
        elif isinstance(e, OSError):  # a path refused or unwritable: `path: reason`
            text = fsutil.oneline(e)
        else:
            text = f"{type(e).__name__}: {e}"
        self.post_message(Notice(text, title, "error", 10))

    # ------------------------------------------------------------------------------------------
    # launching

    def action_launch_leg(self) -> None:
        sel = self.selection
        if sel is None or sel.leg is None:
            self.notify("select a leg first (the experiments tree), then [l]", severity="warning")
            return
        self._prepare_launch(sel.exp_id, [sel.leg])

    def action_launch_all(self) -> None:
        sel = self.selection
        if sel is None:
            self.notify("select an experiment first (the experiments tree), then [L]", severity="warning")
            return
        self._prepare_launch(sel.exp_id, None)

    @work(thread=True, group="actions", exit_on_error=False)
    def _prepare_launch(self, exp_id: str, legs: list[str] | None) -> None:
        registry = self.collector.registry
        if registry is None:
            self.post_message(Notice(self.error or "the registry is not loaded", severity="error"))
            return
        try:
            plan = launch.plan_launch(registry, exp_id, legs)
            rerun = False
            if not plan.legs:  # the leg asked for, or every leg, is done or recorded: a re-run, asked for
                rerun, skipped = True, plan.skipped
                plan = launch.plan_launch(registry, exp_id, legs, rerun=True)
                plan.skipped = skipped
        except Exception as e:  # a refusal (RunError) or anything else: a notification, never a crash
            self._fail("launch", e)
            return
        fresh = launch.fresh_dir_name(registry.settings.exp_root, exp_id)
        into = None
        if legs is None and not rerun:  # `L`: the dir a launch left with legs to run may take them
            try:
                into = continuation.candidate(registry, exp_id)
            except Exception as e:  # noqa: BLE001 - the fresh launch is still offered; say why this is not
                self.post_message(Notice(f"no dir to continue: {e}", severity="warning"))
        self.post_message(LaunchPlanned(registry, plan, fresh, rerun, into))

    def on_launch_planned(self, message: LaunchPlanned) -> None:
        """The confirmation: the exact commands and the fresh dir, before anything starts."""
        plan, fresh, rerun = message.plan, message.fresh, message.rerun
        body = Text()
        into = message.into
        if into is not None:
            queue = (
                f"its queue runs (supervisor pid {into.supervisor_pid}): they join it"
                if into.supervisor_pid
                else "its queue ended with legs still to run: a supervisor starts for them"
            )
            body.append("or continue in ", style="bold")
            body.append(f"{into.exp_dir}", style="cyan")
            body.append(" [c]:\n", style="bold")
            body.append(f"  runs {', '.join(into.runs)} there; {queue}\n", style="cyan")
            for name, why in into.skipped:
                body.append(f"  skips {name}: {why}\n", style="dim")
            body.append(
                "  (recorded as a new plan file beside plan.json: nothing in the dir is overwritten)\n\n",
                style="dim",
            )
        whole = rerun and len(plan.legs) > 1  # `L` on an experiment whose every leg is done
        if rerun:
            for name, why in plan.skipped:
                body.append(f"{name} is DONE: {why}\n", style="bold yellow")
            body.append(
                f"Re-running {'them' if whole else 'it'} makes a new dir; nothing of the earlier runs is "
                "touched.\n\n",
                style="yellow",
            )
        body.append("fresh dir: ", style="bold")
        body.append(f"{fresh}\n", style="cyan")
        body.append(
            "(created on confirm; if another launch took the name first, the next free one: never an "
            "existing dir)\n\n",
            style="dim",
        )
        if plan.executor == "slurm":
            body.append("on Slurm: ", style="bold")
            body.append(
                "each leg a batch job, chained; the scheduler finds the GPUs (no preflight here)\n\n",
                style="cyan",
            )
        for i, (name, text) in enumerate(launch.describe_legs(message.registry, plan, fresh), 1):
            body.append(f"{i}. {name}\n", style="bold")
            body.append(text + "\n\n")
        if plan.skipped and not rerun:
            body.append("skipped:\n", style="bold")
            for name, why in plan.skipped:
                body.append(f"  {name}: {why}\n", style="dim")
        n = len(plan.legs)
        if whole:
            title = f"Re-run the whole experiment {plan.experiment.id} ({n} done legs) in a fresh dir?"
        elif rerun:
            title = f"Re-run done leg {plan.legs[0].name}?"
        else:
            title = f"Launch {n} leg{'s' if n != 1 else ''} of {plan.experiment.id}?"
        screen = ConfirmScreen(
            title,
            body,
            confirm_label="Re-run" if rerun else "Launch",
            confirm_key="R" if rerun else "y",
            danger=rerun,
            more=[Choice("Continue in dir", "c", CONTINUE)] if into is not None else [],
        )

        def answered(choice: str | None) -> None:
            if choice == CONTINUE and into is not None:
                self._continue(message.registry, plan.experiment.id, into.exp_dir)
            elif choice:
                self._launch(message.registry, plan, fresh)
            else:
                self.notify("launch cancelled: nothing was started or written")

        self.app.push_screen(screen, answered)

    @work(thread=True, group="actions", exit_on_error=False)
    def _launch(self, registry: reg.Registry, plan: launch.LaunchPlan, fresh: Path) -> None:
        try:
            exp_dir = launch.start(registry, plan.experiment.id, plan=plan, exp_dir=fresh)
        except Exception as e:
            self._fail("launch failed", e)
            return
        if exp_dir is None:
            self.post_message(Notice("nothing to launch", severity="warning"))
            return
        self.collector.poke()
        names = ", ".join(leg.name for leg in plan.legs)
        self.post_message(Notice(f"{names} in {exp_dir}", "launched"))

    @work(thread=True, group="actions", exit_on_error=False)
    def _continue(self, registry: reg.Registry, exp_id: str, exp_dir: Path) -> None:
        try:
            out = continuation.start(registry, exp_id, exp_dir)
        except Exception as e:
            self._fail("continue failed", e)
            return
        if out is None:
            self.post_message(Notice(f"nothing left to run in {exp_dir}", severity="warning"))
            return
        self.collector.poke()
        self.post_message(Notice(continuation.runs_text(out), "continued"))

    # ------------------------------------------------------------------------------------------
    # stopping

    def action_stop(self) -> None:
        sel, view = self.selection, self.view
        if sel is None or view is None:
            self.notify("select a running leg or dir first", severity="warning")
            return
        exp = view.experiment(sel.exp_id)
        if exp is None:
            return
        active = ACTIVE_STATUSES
        target: tuple[str, str | None] | None = None
        if sel.kind == "dirleg" and sel.exp_dir:
            d = next((d for d in exp.dirs if d.path == sel.exp_dir), None)
            x = next((x for x in d.legs if x.name == sel.leg), None) if d else None
            if x is not None and x.status in active:
                target = (sel.exp_dir, sel.leg)
        elif sel.kind == "leg":
            leg = exp.leg(sel.leg or "")
            if leg is not None and leg.mark in active and leg.exp_dir:
                target = (leg.exp_dir, leg.name)
        else:  # an experiment or a dir: its active queue
            dirs = [
                d
                for d in exp.dirs
                if (sel.exp_dir is None or d.path == sel.exp_dir) and any(x.status in active for x in d.legs)
            ]
            if dirs:
                target = (dirs[-1].path, None)
        if target is None:
            self.notify("nothing running or queued in the selection", severity="warning")
            return
        exp_dir, leg = target
        body = Text()
        body.append(f"{'leg ' + leg if leg else 'the whole queue'} in\n", style="bold")
        body.append(f"{exp_dir}\n\n", style="cyan")
        if exp.executor == "slurm":
            body.append(
                "scancel of its Slurm job and of the rest of the chain; the scheduler ends their "
                "processes on every node. Logs and states stay.",
                style="dim",
            )
        else:
            body.append(
                "SIGTERM to torchrun, then after a grace period every process left of the leg's tree "
                "is killed. Its log and state stay.",
                style="dim",
            )
        screen = ConfirmScreen(
            f"Stop {leg or 'queue of ' + Path(exp_dir).name}?", body, confirm_label="Stop", danger=True
        )
        self.app.push_screen(
            screen, lambda choice: self._stop(exp_dir, leg) if choice else self.notify("stop cancelled")
        )

    @work(thread=True, group="actions", exit_on_error=False)
    def _stop(self, exp_dir: str, leg: str | None) -> None:
        registry = self.collector.registry
        if registry is None:
            self.post_message(Notice(self.error or "the registry is not loaded", "stop", "error", 10))
            return
        try:  # as `cockpit stop`: only a dir under the registry's exp_root, only proven processes
            after = launch.stop(exp_dir, leg, exp_root=registry.settings.exp_root)
        except Exception as e:
            self._fail("stop", e)
            return
        self.collector.poke()
        # a leg that ended before the stop reached it says so: `done (stop came after it ended)`
        what = f"{leg}: {launch.stop_outcome(after, leg)}" if leg else "queue stopped"
        self.post_message(Notice(f"{what} in {Path(exp_dir).name}", "stop"))

    # ------------------------------------------------------------------------------------------
    # writing

    def action_write_report(self) -> None:
        sel, view = self.selection, self.view
        exp = view.experiment(sel.exp_id) if sel and view else None
        if exp is None or not exp.dirs:
            self.notify("select an experiment dir first (one that has logs)", severity="warning")
            return
        self._write_report(sel.exp_dir or exp.dirs[-1].path, view.tail)

    @work(thread=True, group="actions", exit_on_error=False)
    def _write_report(self, exp_dir: str, tail: int) -> None:
        """The dir's report.md, CSVs and plots. Its deltas are against the baseline the dir's plan
        names (the report reads it there), as the supervisor's report after each leg."""
        try:
            out = write_report(Path(exp_dir), tail=tail)
        except Exception as e:  # a report problem is a notification, never a crash
            self._fail("report", e)
            return
        self.post_message(Notice(str(out), "report written"))

    def action_write_guide(self) -> None:
        """Ask where (prefilled with `<exp_root>/resume-guide.md`), then write the guide there."""
        registry = self.collector.registry
        if registry is None:
            self.notify(self.error or "the registry is not loaded yet", severity="error")
            return
        default = str(guide_path(registry))
        note = "Regenerated in place when it exists; never written into a path the registry marks read-only."

        def answered(path: str | None) -> None:
            if path:
                self._write_guide(registry, path)
            else:
                self.notify("resume guide not written")

        self.app.push_screen(PathPrompt("Write the resume guide to:", default, note), answered)

    @work(thread=True, group="actions", exit_on_error=False)
    def _write_guide(self, registry: reg.Registry, path: str) -> None:
        out = guide_path(registry, path)
        ro = next((ro for ro in registry.settings.read_only if fsutil.is_inside(out, ro)), None)
        if ro is not None:
            self.post_message(
                Notice(
                    f"{out}: inside {ro}, which the registry marks read-only; nothing written",
                    "resume guide",
                    "error",
                    10,
                )
            )
            return
        try:
            out = write_guide(registry, out)
        except Exception as e:
            self._fail("resume guide", e)
            return
        self.post_message(Notice(str(out), "resume guide written"))
