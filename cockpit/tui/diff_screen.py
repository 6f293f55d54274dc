"""The flags on which a leg differs from its baseline, or from any other leg of the registry.

`d` on a leg opens it: the other legs on the left (the baseline first and chosen), the flags
that differ on the right (`Registry.leg_diff`: the trainer flags each leg's command passes).
Moving along the list compares with another leg; escape closes.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, OptionList, Static
from textual.widgets.option_list import Option

from cockpit import registry as reg

ABSENT = "(not given)"  # a flag the leg does not pass


def value_text(v: str | bool | None, style: str) -> Text:
    """A flag's value as the table shows it: a bare flag `(set)`, an absent one dimmed."""
    if v is None:
        return Text(ABSENT, style="dim")
    return Text("(set)" if v is True else str(v), style=style)


def leg_ref(leg: reg.Leg) -> str:
    return f"{leg.experiment}/{leg.name}"


class DiffScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,d", "close", "Close", show=False)]

    def __init__(self, registry: reg.Registry, leg: reg.Leg, baseline: reg.Leg | None) -> None:
        super().__init__()
        self.registry = registry
        self.leg = leg
        self.baseline = baseline
        # the baseline first, then the leg's own experiment, then the others
        others = [x for e in registry.experiments for x in e.legs if leg_ref(x) != leg_ref(leg)]
        others.sort(
            key=lambda x: (
                baseline is None or leg_ref(x) != leg_ref(baseline),
                x.experiment != leg.experiment,
            )
        )
        self.others = others

    def compose(self) -> ComposeResult:
        with Vertical(id="diff-box"):
            yield Static(id="diff-title")
            with Horizontal(id="diff-body"):
                options = [
                    Option(Text(leg_ref(x) + ("  (baseline)" if x is self.baseline else "")), id=str(i))
                    for i, x in enumerate(self.others)
                ]
                yield OptionList(*options, id="diff-legs")
                yield DataTable(id="diff-table", cursor_type="row", zebra_stripes=True)
            yield Static(Text("↑↓ compare with another leg   esc close", style="dim"), id="diff-keys")

    def on_mount(self) -> None:
        legs = self.query_one(OptionList)
        legs.focus()
        if self.others:
            legs.highlighted = 0
            self.show(self.others[0])
        else:
            self.show(None)

    def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option.id is not None:
            self.show(self.others[int(event.option.id)])

    def show(self, other: reg.Leg | None) -> None:
        """The table of differing flags against `other`."""
        title = Text(f"Flags of {leg_ref(self.leg)}", style="bold")
        table = self.query_one(DataTable)
        table.clear(columns=True)
        if other is None:
            title.append(" : no other leg in the registry to compare with", style="dim")
            self.query_one("#diff-title", Static).update(title)
            return
        title.append(" that differ from ")
        title.append(leg_ref(other), style="bold cyan")
        if other is self.baseline:
            title.append(" (its baseline)", style="italic")
        rows = self.registry.leg_diff(self.leg, other) or []
        title.append(
            f": {len(rows)} flag{'s' if len(rows) != 1 else ''}" if rows else ": none, the same command",
            style="bold yellow" if rows else "green",
        )
        self.query_one("#diff-title", Static).update(title)
        cells = [(Text(f"--{d.flag}"), value_text(d.run, ""), value_text(d.base, "cyan")) for d in rows]
        heads = (Text("flag"), Text(self.leg.name, style="bold"), Text(other.name, style="bold cyan"))
        # each column as wide as its widest cell, given up front: a table filled before its first
        # layout would otherwise keep the width of its heading and cut every flag to `--mo`
        for i, head in enumerate(heads):
            table.add_column(head, width=max(c.cell_len for c in (head, *(row[i] for row in cells))))
        for row in cells:  # row[1]: this leg's value, row[2]: the other's
            table.add_row(*row)

    def action_close(self) -> None:
        self.dismiss(None)
