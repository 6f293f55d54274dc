"""The cockpit: a Textual app over the registry, the experiment dirs, the logs and the GPUs.

The app is a client, like the CLI: a thread worker (`Collector`) reads files, processes and NVML
and publishes an immutable view; one 0.5 s timer applies the latest view to the widgets (tables
refresh at most twice a second, and the UI thread never waits on a file or a process). Launches,
stops and report writes run in their own thread workers and call the core (runs, report, resume).
Closing the app never touches a leg: the supervisors are detached processes.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Tree

from cockpit import registry as reg
from cockpit import runs
from cockpit.tui.collector import Collector, Request
from cockpit.tui.confirm import ConfirmScreen
from cockpit.tui.experiments import ExperimentTree, Selection
from cockpit.tui.final_table import FinalTable
from cockpit.tui.gpu_panel import GpuPanel
from cockpit.tui.header import CockpitHeader
from cockpit.tui.help import HelpScreen
from cockpit.tui.live_table import LiveTable
from cockpit.tui.log_panes import LogPanes
from cockpit.tui.resume_box import ResumeBox
from cockpit.tui.resume_panel import ResumePanel
from cockpit.tui.state import CockpitView, LegView

ACTIVE = ("running", "queued", "waiting")
ENDED = ("done", "failed", "stopped")


class CockpitApp(App[None]):
    CSS_PATH = "cockpit.tcss"
    TITLE = "cockpit"

    BINDINGS = [
        Binding("l", "launch_leg", "Launch leg"),
        Binding("L", "launch_all", "Launch remaining"),
        Binding("s", "stop", "Stop"),
        Binding("r", "write_report", "Report"),
        Binding("g", "write_guide", "Resume guide"),
        Binding("f", "toggle_follow", "Follow"),
        Binding("m", "toggle_maximize", "Maximize"),
        Binding("left_square_bracket", "cycle_tab(-1)", "Prev log", show=False),
        Binding("right_square_bracket", "cycle_tab(1)", "Next log", show=False),
        Binding("tab", "focus_next", "Next pane", show=False),
        Binding("shift+tab", "focus_previous", "Prev pane", show=False),
        Binding("question_mark", "help", "Keys"),
        Binding("q", "quit", "Quit"),
    ]
    # What `?` and the command palette list: (key, action, description).
    KEYS = [
        ("l", "launch_leg", "launch the selected leg (confirm; a done leg asks for an explicit re-run)"),
        ("L", "launch_all", "launch all remaining legs of the selected experiment (confirm)"),
        ("s", "stop", "stop the selected running leg, or the queue of the selected dir (confirm)"),
        ("r", "write_report", "write the report of the selected experiment dir"),
        ("g", "write_guide", "write the resume guide"),
        ("f", "toggle_follow", "follow the current log on/off (scrolling up pauses it too)"),
        ("[ / ]", "cycle_tab", "previous / next log tab"),
        ("m", "toggle_maximize", "maximize the focused pane / restore"),
        ("tab / shift+tab", "focus_next focus_previous", "move between panes"),
        ("?", "help", "this list"),
        ("q", "quit", "quit (running legs go on)"),
    ]

    def __init__(
        self,
        registry_path: Path | str = reg.DEFAULT_REGISTRY,
        *,
        sampler: Any | None = None,
        branch: Callable[[], str | None] | str | None = None,
        clock: Callable[[], dt.datetime] | None = None,
        refresh_s: float = 0.5,
        poll_s: float = 0.25,
        max_log_lines: int = 2000,
    ):
        super().__init__()
        self.collector = Collector(registry_path, sampler=sampler, branch=branch, clock=clock,
                                   max_log_lines=max_log_lines)
        self.refresh_s = refresh_s
        self.poll_s = poll_s
        self.max_log_lines = max_log_lines
        self.view: CockpitView | None = None
        self.error: str | None = None
        self.applied_seq = -1
        self.selection: Selection | None = None
        self._stopping = False
        self.finished: list[str] = []  # leg transitions notified (tests read it)
        # The first pass (GPU sample, state, report) starts now, in parallel with Textual's own
        # startup; the collector worker picks up from it. It touches no widget.
        self._first = threading.Thread(target=self._first_pass, name="cockpit-first-pass", daemon=True)
        self._first.start()
        self.quit_message: str | None = None
        self.notes: deque[tuple[str, str]] = deque(maxlen=200)  # (title, message) of every notification

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

    def main(self, selector):
        """A widget of the main screen, also while a confirmation or the help is on top."""
        return self.screen_stack[0].query_one(selector)

    def on_mount(self) -> None:
        self.main("#experiments").border_title = "Experiments"
        self.main("#resume-box").border_title = "Resume"
        self.main("#gpus").border_title = "GPUs"
        self.main("#final").border_title = "Final metrics"
        self.main("#logs").border_title = "Logs"
        self.main(ExperimentTree).focus()
        self._collect()
        self.set_interval(self.refresh_s, self.tick)

    @work(thread=True, group="collector", exit_on_error=False)
    def _collect(self) -> None:
        from textual.worker import get_current_worker

        worker = get_current_worker()
        c = self.collector
        self._first.join()
        self._call(self.tick)  # the first full paint does not wait for the timer
        c.run(lambda: worker.is_cancelled or self._stopping, period=self.poll_s)

    def _first_pass(self) -> None:
        try:
            self.collector.sample()
            self.collector.compute()
        except Exception as e:  # shown by the app, never raised into Textual's startup
            self.collector.error = f"cockpit internal error: {type(e).__name__}: {e}"

    def notify(self, message: str, *, title: str = "", **kwargs) -> None:
        """Textual's notification, also kept in `notes` (a toast expires; the tests read them)."""
        self.notes.append((title, message))
        kwargs.setdefault("markup", False)  # paths and error text may hold [brackets]
        super().notify(message, title=title, **kwargs)

    def _fail(self, title: str, e: Exception) -> None:
        """An action that failed, from a worker: one line in a notification."""
        known = isinstance(e, (runs.RunError, reg.RegistryError))
        self._call(self.notify, str(e) if known else f"{type(e).__name__}: {e}", title=title, severity="error",
                   timeout=10)

    def _call(self, fn: Callable, *args, **kwargs) -> Any:
        """Run fn on the UI thread from a worker; quietly nothing once the app is closing."""
        if self._stopping:
            return None
        try:
            return self.call_from_thread(fn, *args, **kwargs)
        except RuntimeError:
            return None

    def on_unmount(self) -> None:
        self._stopping = True
        self.collector.wake.set()

    # ------------------------------------------------------------------------------------------
    # applying what the worker computed (UI thread, at most twice a second)

    def tick(self) -> None:
        if self._stopping or not self.screen_stack:
            return
        try:
            self._tick()
        except NoMatches:  # a tick racing the app's shutdown: nothing left to paint
            pass

    def _tick(self) -> None:
        pub = self.collector.take()
        if pub.seq != self.applied_seq:
            self.applied_seq = pub.seq
            self.apply(pub.view, pub.error)
            self.main(FinalTable).report = pub.report
        self.main(LogPanes).append(pub.lines)

    def apply(self, view: CockpitView | None, error: str | None) -> None:
        header = self.main(CockpitHeader)
        if error and error != self.error:
            self.notify(error, title="registry", severity="error", timeout=10)
        self.error = error
        panel = self.main(ResumePanel)
        header.headline = view.headline if view is not None else None
        header.error = error
        panel.registry_error = error if view is None else None
        if view is None:
            return
        old = self.view
        self.view = view
        tree = self.main(ExperimentTree)
        tree.experiments = view.experiments
        if self.selection is None and tree.selection is not None:
            self.select(tree.selection)
        self.main(GpuPanel).gpu = view.gpu
        live = self.main(LiveTable)
        live.tail = view.tail
        live.live = view.live
        panel.resume = view.resume
        panel.problems = view.errors + ((error,) if error else ())
        if old is not None:
            self.announce(old, view)
        self.sync_tabs()

    def announce(self, old: CockpitView, new: CockpitView) -> None:
        """A notification and the terminal bell when a leg finishes or fails."""
        before = old.leg_marks()
        for key, status in new.leg_marks().items():
            was = before.get(key)
            if was in ACTIVE and status in ENDED:
                leg = Path(key).name
                severity = "information" if status == "done" else "error"
                self.notify(f"{leg} {status} ({Path(key).parent.name})", title=f"leg {status}", severity=severity)
                self.bell()
                self.finished.append(f"{key}:{status}")

    def sync_tabs(self) -> None:
        view = self.view
        if view is None:
            return
        tabs: list[tuple[str, str, str]] = [(v.key, v.leg, v.log) for v in view.live]
        sel = self.selected_log()
        if sel is not None and sel[0] not in {t[0] for t in tabs}:
            tabs.append(sel)
        panes = self.main(LogPanes)
        panes.sync(tabs)
        self.collector.request.tabs = tuple((k, p) for k, _, p in tabs)

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
        sel = event.node.data
        if self._stopping or not self.screen_stack:  # the app is closing
            return
        if isinstance(sel, Selection) and sel != self.selection:
            self.select(sel)

    def select(self, sel: Selection) -> None:
        self.selection = sel
        report_dir = sel.exp_dir
        if report_dir is None and sel.kind == "leg":  # a leg: the dir of its latest run here
            leg = self.selected_leg()
            report_dir = leg.exp_dir if leg is not None else None
        self.collector.request = Request(self.collector.request.tabs, report_dir, sel.exp_id)
        self.collector.poke()
        self.sync_tabs()
        key = self.selected_log()
        if key is not None:
            self.main(LogPanes).select(key[0])

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """A live row under the cursor brings its leg's log tab to the front."""
        if self._stopping or not self.screen_stack:  # the app is closing
            return
        if event.data_table.id == "live" and event.row_key is not None and event.row_key.value:
            self.main(LogPanes).select(event.row_key.value)

    # ------------------------------------------------------------------------------------------
    # keys

    def action_help(self) -> None:
        self.push_screen(HelpScreen([(k, d) for k, _, d in self.KEYS]))

    def action_cycle_tab(self, step: int) -> None:
        self.main(LogPanes).cycle(step)

    def action_toggle_follow(self) -> None:
        v = self.main(LogPanes).current()
        if v is None:
            self.notify("no log pane open: select a leg that has a log", severity="warning")
            return
        v.set_following(not v.following)
        self.notify(f"{'following' if v.following else 'paused'}: {Path(v.path).name}")

    def action_toggle_maximize(self) -> None:
        screen = self.screen_stack[0]
        if screen.maximized is not None:
            screen.minimize()
        elif self.focused is None or not screen.maximize(self.focused):
            self.notify("focus a pane first (tab)", severity="warning")

    def action_quit(self) -> None:
        running = len(self.view.live) if self.view else 0
        msg = "cockpit closed; legs are never touched by closing it"
        if running:
            legs = "1 running leg goes on" if running == 1 else f"{running} running legs go on"
            msg = f"cockpit closed; {legs} (detached; closing the cockpit never touches a leg)"
        self.quit_message = msg
        self._stopping = True
        self.collector.wake.set()
        self.exit(message=msg)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for key, action, desc in self.KEYS:
            if action in ("focus_next focus_previous", "cycle_tab", "help", "quit"):
                continue  # below, one command each (Textual's own list already has Quit)
            yield SystemCommand(desc.split(" (")[0].capitalize(), f"key: {key}",
                                lambda a=action: self.run_action(a))
        yield SystemCommand("Next log tab", "key: ]", lambda: self.action_cycle_tab(1))
        yield SystemCommand("Previous log tab", "key: [", lambda: self.action_cycle_tab(-1))
        yield SystemCommand("Next pane", "key: tab", self.action_focus_next)
        yield SystemCommand("Previous pane", "key: shift+tab", self.action_focus_previous)
        yield SystemCommand("Keys", "every key of the cockpit (?)", self.action_help)

    # launching -------------------------------------------------------------------------------

    def _need_registry(self) -> reg.Registry | None:
        registry = self.collector.registry
        if registry is None:
            self.notify(self.error or "the registry is not loaded yet", severity="error")
        return registry

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
            self._call(self.notify, self.error or "the registry is not loaded", severity="error")
            return
        try:
            plan = runs.plan_launch(registry, exp_id, legs)
            rerun = False
            if not plan.legs and legs:  # the one leg asked for is done or recorded
                rerun, skipped = True, plan.skipped
                plan = runs.plan_launch(registry, exp_id, legs, rerun=True)
                plan.skipped = skipped
            elif not plan.legs:
                why = "; ".join(f"{n}: {w}" for n, w in plan.skipped)
                self._call(self.notify, f"nothing remains to run in {exp_id} ({why}). Select a leg and press l "
                           "to re-run one.", title="launch", severity="warning", timeout=8)
                return
        except Exception as e:  # a refusal (RunError) or anything else: a notification, never a crash
            self._fail("launch", e)
            return
        fresh = runs.fresh_dir_name(registry.settings.exp_root, exp_id)
        self._call(self._confirm_launch, registry, plan, fresh, rerun)

    def _confirm_launch(self, registry: reg.Registry, plan: runs.LaunchPlan, fresh: Path, rerun: bool) -> None:
        body = Text()
        if rerun:
            for name, why in plan.skipped:
                body.append(f"{name} is DONE: {why}\n", style="bold yellow")
            body.append("Re-running it makes a new dir; nothing of the earlier run is touched.\n\n", style="yellow")
        body.append("fresh dir: ", style="bold")
        body.append(f"{fresh}\n", style="cyan")
        body.append("(created on confirm; if another launch took the name first, the next free one: never an existing dir)\n\n", style="dim")
        for i, leg in enumerate(plan.legs, 1):
            body.append(f"{i}. {leg.name}\n", style="bold")
            body.append(runs.format_command(leg, fresh, plan.torchrun) + "\n\n")
        if plan.skipped and not rerun:
            body.append("skipped:\n", style="bold")
            for name, why in plan.skipped:
                body.append(f"  {name}: {why}\n", style="dim")
        n = len(plan.legs)
        title = (f"Re-run done leg {plan.legs[0].name}?" if rerun else
                 f"Launch {n} leg{'s' if n != 1 else ''} of {plan.experiment.id}?")
        screen = ConfirmScreen(title, body, confirm_label="Re-run" if rerun else "Launch",
                               confirm_key="R" if rerun else "y", danger=rerun)

        def done(yes: bool | None) -> None:
            if yes:
                self._launch(registry, plan, fresh)
            else:
                self.notify("launch cancelled")

        self.push_screen(screen, done)

    @work(thread=True, group="actions", exit_on_error=False)
    def _launch(self, registry: reg.Registry, plan: runs.LaunchPlan, fresh: Path) -> None:
        try:
            exp_dir = runs.launch(registry, plan.experiment.id, plan=plan, exp_dir=fresh)
        except Exception as e:
            self._fail("launch failed", e)
            return
        if exp_dir is None:
            self._call(self.notify, "nothing to launch", severity="warning")
            return
        self.collector.poke()
        names = ", ".join(leg.name for leg in plan.legs)
        self._call(self.notify, f"{names} in {exp_dir}", title="launched")

    # stopping --------------------------------------------------------------------------------

    def action_stop(self) -> None:
        sel, view = self.selection, self.view
        if sel is None or view is None:
            self.notify("select a running leg or dir first", severity="warning")
            return
        exp = view.experiment(sel.exp_id)
        if exp is None:
            return
        target: tuple[str, str | None] | None = None
        if sel.kind == "dirleg" and sel.exp_dir:
            d = next((d for d in exp.dirs if d.path == sel.exp_dir), None)
            x = next((x for x in d.legs if x.name == sel.leg), None) if d else None
            if x is not None and x.status in ACTIVE:
                target = (sel.exp_dir, sel.leg)
        elif sel.kind == "leg":
            leg = exp.leg(sel.leg or "")
            if leg is not None and leg.mark in ACTIVE and leg.exp_dir:
                target = (leg.exp_dir, leg.name)
        else:  # an experiment or a dir: its active queue
            dirs = [d for d in exp.dirs if (sel.exp_dir is None or d.path == sel.exp_dir)
                    and any(x.status in ACTIVE for x in d.legs)]
            if dirs:
                target = (dirs[-1].path, None)
        if target is None:
            self.notify("nothing running or queued in the selection", severity="warning")
            return
        exp_dir, leg = target
        body = Text()
        body.append(f"{'leg ' + leg if leg else 'the whole queue'} in\n", style="bold")
        body.append(f"{exp_dir}\n\n", style="cyan")
        body.append("SIGTERM to torchrun, then after a grace period every process left of the leg's tree "
                    "is killed. Its log and state stay.", style="dim")
        screen = ConfirmScreen(f"Stop {leg or 'queue of ' + Path(exp_dir).name}?", body, confirm_label="Stop",
                               danger=True)
        self.push_screen(screen, lambda yes: self._stop(exp_dir, leg) if yes else self.notify("stop cancelled"))

    @work(thread=True, group="actions", exit_on_error=False)
    def _stop(self, exp_dir: str, leg: str | None) -> None:
        try:
            runs.stop(exp_dir, leg)
        except Exception as e:
            self._fail("stop", e)
            return
        self.collector.poke()
        self._call(self.notify, f"stopped {leg or 'queue'} in {Path(exp_dir).name}", title="stop")

    # writing ---------------------------------------------------------------------------------

    def action_write_report(self) -> None:
        sel, view = self.selection, self.view
        exp = view.experiment(sel.exp_id) if sel and view else None
        if exp is None or not exp.dirs:
            self.notify("select an experiment dir first (one that has logs)", severity="warning")
            return
        exp_dir = sel.exp_dir or exp.dirs[-1].path
        self._write_report(exp_dir, exp.baseline)

    @work(thread=True, group="actions", exit_on_error=False)
    def _write_report(self, exp_dir: str, baseline: str | None) -> None:
        try:
            from cockpit import report

            out = report.write_report(Path(exp_dir))
        except Exception as e:  # a report problem is a notification, never a crash
            self._fail("report", e)
            return
        self._call(self.notify, str(out), title="report written")

    def action_write_guide(self) -> None:
        if self._need_registry() is not None:
            self._write_guide()

    @work(thread=True, group="actions", exit_on_error=False)
    def _write_guide(self) -> None:
        try:
            from cockpit import resume

            out = resume.write_guide(self.collector.registry)
        except Exception as e:
            self._fail("resume guide", e)
            return
        self._call(self.notify, str(out), title="resume guide written")
