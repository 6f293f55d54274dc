"""The cockpit's main screen: the layout, the keys, and what they do.

The collector (collector.py) runs in a thread worker of this screen and posts each new view and
the new log lines as messages (messages.py). Their handlers set this screen's reactive view
models, and the watchers hand each widget its part; a widget repaints only when its part changed.
Keys that act (launch, stop, write a report or the guide) run the core in thread workers, which
answer with messages too: the UI thread never waits on a file or a process. Closing the cockpit
never touches a leg: the supervisors are detached processes.
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

from cockpit import launch
from cockpit import registry as reg
from cockpit.expdir import RunError
from cockpit.report import write_report
from cockpit.resume import write_guide
from cockpit.tui.collector import Collector
from cockpit.tui.commands import BindingCommands
from cockpit.tui.confirm import ConfirmScreen
from cockpit.tui.experiments import ExperimentTree, Selection
from cockpit.tui.final_table import FinalTable
from cockpit.tui.gpu_panel import GpuPanel
from cockpit.tui.header import CockpitHeader
from cockpit.tui.live_table import LiveTable
from cockpit.tui.log_panes import LogPanes
from cockpit.tui.messages import LaunchPlanned, LogLines, Notice, ViewPublished
from cockpit.tui.resume_box import ResumeBox
from cockpit.tui.resume_panel import ResumePanel
from cockpit.tui.state import CockpitView, LegView, ReportView
from cockpit.vocab import ACTIVE_STATUSES, ENDED_STATUSES, Status


class MainScreen(Screen[None]):
    # The one list of keys: the footer shows those with show=True, `?` opens Textual's keys panel
    # (description and tooltip of each), and the command palette offers each by its description.
    BINDINGS = [
        Binding("l", "launch_leg", "Launch leg",
                tooltip="Launch the selected leg (confirm; a done leg asks for an explicit re-run with R)"),
        Binding("L", "launch_all", "Launch remaining",
                tooltip="Launch all remaining legs of the selected experiment (confirm)"),
        Binding("s", "stop", "Stop", tooltip="Stop the selected running leg, or the queue of the selected dir (confirm)"),
        Binding("r", "write_report", "Report", tooltip="Write the report of the selected experiment dir"),
        Binding("g", "write_guide", "Resume guide", tooltip="Write the resume guide"),
        Binding("f", "toggle_follow", "Follow", tooltip="Follow the current log on/off (scrolling up pauses it too)"),
        Binding("m", "toggle_maximize", "Maximize", tooltip="Maximize the focused pane / restore"),
        Binding("left_square_bracket", "cycle_tab(-1)", "Previous log tab", show=False,
                tooltip="Bring the previous leg's log to the front"),
        Binding("right_square_bracket", "cycle_tab(1)", "Next log tab", show=False,
                tooltip="Bring the next leg's log to the front"),
        Binding("tab", "app.focus_next", "Next pane", show=False, tooltip="Move the focus to the next pane"),
        Binding("shift+tab", "app.focus_previous", "Previous pane", show=False,
                tooltip="Move the focus to the previous pane"),
        Binding("question_mark", "toggle_keys", "Keys", tooltip="Show / hide this list of keys"),
        Binding("q", "app.quit", "Quit", tooltip="Quit the cockpit (running legs go on)"),
    ]
    COMMANDS = {BindingCommands}

    # The latest results of the collector, set by the message handlers; the watchers pass them on.
    view: var[CockpitView | None] = var(None, init=False)
    error: var[str | None] = var(None, init=False)  # the registry's error, or the collector's
    report: var[ReportView | None] = var(None, init=False)
    selection: var[Selection | None] = var(None, init=False)  # the tree node under the cursor

    def __init__(self, collector: Collector, *, poll_s: float = 0.25, refresh_s: float = 0.5,
                 max_log_lines: int = 2000) -> None:
        super().__init__()
        self.collector = collector
        self.poll_s = poll_s
        self.refresh_s = refresh_s
        self.max_log_lines = max_log_lines
        self.finished: list[str] = []  # `exp_dir/leg:status` of each leg announced as finished

    # ------------------------------------------------------------------------------------------
    # layout

    def compose(self) -> ComposeResult:
        yield CockpitHeader(id="header")
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield ExperimentTree(id="experiments")
                with ResumeBox(id="resume-box"):
                    yield ResumePanel(id="resume")
            with Vertical(id="right"):
                yield GpuPanel(id="gpus")
                yield LiveTable(id="live")
                yield FinalTable(id="final")
                yield LogPanes(id="logs", max_lines=self.max_log_lines)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#experiments").border_title = "Experiments"
        self.query_one("#resume-box").border_title = "Resume"
        self.query_one("#gpus").border_title = "GPUs"
        self.query_one("#final").border_title = "Final metrics"
        self.query_one("#logs").border_title = "Logs"
        self.query_one(ExperimentTree).focus()
        self._collect()

    def on_unmount(self) -> None:
        self.collector.stop()

    @work(thread=True, exclusive=True, group="collector", exit_on_error=False)
    def _collect(self) -> None:
        worker = get_current_worker()
        self.collector.run(self.post_message, lambda: worker.is_cancelled, period=self.poll_s,
                           post_every=self.refresh_s)

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
        self.query_one(FinalTable).report = report

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
        panel = self.query_one(ResumePanel)
        panel.registry_error = error if view is None else None
        if view is not None:
            panel.resume = view.resume
            panel.problems = view.errors + ((error,) if error else ())

    def announce(self, old: CockpitView, new: CockpitView) -> None:
        """A notification and the terminal bell when a leg finishes or fails."""
        before = old.leg_marks()
        for key, status in new.leg_marks().items():
            # a leg that leaves the active statuses for an ended one has finished: it is announced
            if before.get(key) in ACTIVE_STATUSES and status in ENDED_STATUSES:
                leg = Path(key).name
                severity = "information" if status == Status.DONE else "error"
                self.notify(f"{leg} {status} ({Path(key).parent.name})", title=f"leg {status}", severity=severity)
                self.app.bell()
                self.finished.append(f"{key}:{status}")

    # ------------------------------------------------------------------------------------------
    # selection and log tabs

    def sync_tabs(self) -> None:
        """A log tab per running leg, plus the selected leg's; the collector follows exactly these."""
        view = self.view
        if view is None:
            return
        tabs: list[tuple[str, str, str]] = [(v.key, v.leg, v.log) for v in view.live]
        sel = self.selected_log()
        if sel is not None and sel[0] not in {t[0] for t in tabs}:
            tabs.append(sel)
        self.query_one(LogPanes).sync(tabs)
        self.collector.request = dataclasses.replace(self.collector.request,
                                                     tabs=tuple((k, p) for k, _, p in tabs))

    def selected_log(self) -> tuple[str, str, str] | None:
        """(key, title, path) of the selected leg's log, if it has one."""
        sel, view = self.selection, self.view
        if sel is None or view is None or sel.leg is None:
            return None
        if sel.kind == "dirleg" and sel.exp_dir:
            return (f"{sel.exp_dir}/{sel.leg}", sel.leg, str(Path(sel.exp_dir) / f"{sel.leg}.log"))
        leg = self.selected_leg()
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
        self.collector.request = dataclasses.replace(self.collector.request, report_dir=report_dir,
                                                     report_exp=sel.exp_id)
        self.collector.poke()
        self.sync_tabs()
        key = self.selected_log()
        if key is not None:
            self.query_one(LogPanes).select(key[0])

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """A live row under the cursor brings its leg's log tab to the front."""
        if event.data_table.id == "live" and event.row_key is not None and event.row_key.value:
            self.query_one(LogPanes).select(event.row_key.value)

    # ------------------------------------------------------------------------------------------
    # keys that show

    def action_cycle_tab(self, step: int) -> None:
        self.query_one(LogPanes).cycle(step)

    def action_toggle_follow(self) -> None:
        v = self.query_one(LogPanes).current()
        if v is None:
            self.notify("no log pane open: select a leg that has a log", severity="warning")
            return
        v.set_following(not v.following)
        self.notify(f"{'following' if v.following else 'paused'}: {Path(v.path).name}")

    def action_toggle_maximize(self) -> None:
        if self.maximized is not None:
            self.minimize()
        elif self.focused is None or not self.maximize(self.focused):
            self.notify("focus a pane first (tab)", severity="warning")

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
        known = isinstance(e, (RunError, reg.RegistryError))
        self.post_message(Notice(str(e) if known else f"{type(e).__name__}: {e}", title, "error", 10))

    # ------------------------------------------------------------------------------------------
    # launching

    def action_launch_leg(self) -> None:
        sel = self.selection
        if sel is None or sel.leg is None:
            self.notify("select a leg first (the experiments tree)", severity="warning")
            return
        self._prepare_launch(sel.exp_id, [sel.leg])

    def action_launch_all(self) -> None:
        sel = self.selection
        if sel is None:
            self.notify("select an experiment first (the experiments tree)", severity="warning")
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
            if not plan.legs and legs:  # the one leg asked for is done or recorded
                rerun, skipped = True, plan.skipped
                plan = launch.plan_launch(registry, exp_id, legs, rerun=True)
                plan.skipped = skipped
            elif not plan.legs:
                why = "; ".join(f"{n}: {w}" for n, w in plan.skipped)
                self.post_message(Notice(f"nothing remains to run in {exp_id} ({why}). Select a leg and press l "
                                         "to re-run one.", "launch", "warning", 8))
                return
        except Exception as e:  # a refusal (RunError) or anything else: a notification, never a crash
            self._fail("launch", e)
            return
        fresh = launch.fresh_dir_name(registry.settings.exp_root, exp_id)
        self.post_message(LaunchPlanned(registry, plan, fresh, rerun))

    def on_launch_planned(self, message: LaunchPlanned) -> None:
        """The confirmation: the exact commands and the fresh dir, before anything starts."""
        plan, fresh, rerun = message.plan, message.fresh, message.rerun
        body = Text()
        if rerun:
            for name, why in plan.skipped:
                body.append(f"{name} is DONE: {why}\n", style="bold yellow")
            body.append("Re-running it makes a new dir; nothing of the earlier run is touched.\n\n", style="yellow")
        body.append("fresh dir: ", style="bold")
        body.append(f"{fresh}\n", style="cyan")
        body.append("(created on confirm; if another launch took the name first, the next free one: never an "
                    "existing dir)\n\n", style="dim")
        if plan.executor == "slurm":
            body.append("on Slurm: ", style="bold")
            body.append("each leg a batch job, chained; the scheduler finds the GPUs (no preflight here)\n\n",
                        style="cyan")
        for i, (name, text) in enumerate(launch.describe_legs(message.registry, plan, fresh), 1):
            body.append(f"{i}. {name}\n", style="bold")
            body.append(text + "\n\n")
        if plan.skipped and not rerun:
            body.append("skipped:\n", style="bold")
            for name, why in plan.skipped:
                body.append(f"  {name}: {why}\n", style="dim")
        n = len(plan.legs)
        title = (f"Re-run done leg {plan.legs[0].name}?" if rerun else
                 f"Launch {n} leg{'s' if n != 1 else ''} of {plan.experiment.id}?")
        screen = ConfirmScreen(title, body, confirm_label="Re-run" if rerun else "Launch",
                               confirm_key="R" if rerun else "y", danger=rerun)

        def answered(yes: bool | None) -> None:
            if yes:
                self._launch(message.registry, plan, fresh)
            else:
                self.notify("launch cancelled")

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
            dirs = [d for d in exp.dirs if (sel.exp_dir is None or d.path == sel.exp_dir)
                    and any(x.status in active for x in d.legs)]
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
            body.append("scancel of its Slurm job and of the rest of the chain; the scheduler ends their "
                        "processes on every node. Logs and states stay.", style="dim")
        else:
            body.append("SIGTERM to torchrun, then after a grace period every process left of the leg's tree "
                        "is killed. Its log and state stay.", style="dim")
        screen = ConfirmScreen(f"Stop {leg or 'queue of ' + Path(exp_dir).name}?", body, confirm_label="Stop",
                               danger=True)
        self.app.push_screen(screen, lambda yes: self._stop(exp_dir, leg) if yes else self.notify("stop cancelled"))

    @work(thread=True, group="actions", exit_on_error=False)
    def _stop(self, exp_dir: str, leg: str | None) -> None:
        registry = self.collector.registry
        if registry is None:
            self.post_message(Notice(self.error or "the registry is not loaded", "stop", "error", 10))
            return
        try:  # as `cockpit stop`: only a dir under the registry's exp_root, only proven processes
            launch.stop(exp_dir, leg, exp_root=registry.settings.exp_root)
        except Exception as e:
            self._fail("stop", e)
            return
        self.collector.poke()
        self.post_message(Notice(f"stopped {leg or 'queue'} in {Path(exp_dir).name}", "stop"))

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
        registry = self.collector.registry
        if registry is None:
            self.notify(self.error or "the registry is not loaded yet", severity="error")
            return
        self._write_guide(registry)

    @work(thread=True, group="actions", exit_on_error=False)
    def _write_guide(self, registry: reg.Registry) -> None:
        try:
            out = write_guide(registry)
        except Exception as e:
            self._fail("resume guide", e)
            return
        self.post_message(Notice(str(out), "resume guide written"))
