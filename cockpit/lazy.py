"""Heavy libraries, imported where first used: the TUI and the CLI's quick commands start without them.

numpy holds the columns of a full parse (a report's plots, the series it draws); the
TUI, `cockpit status` and a summary report never need it, and importing it costs a tenth of a
second at every start. The modules that use it ask for it here, once, when they first need it.

Layer 0: imports nothing from the cockpit.
"""

from __future__ import annotations

from types import ModuleType


def numpy() -> ModuleType:
    import numpy  # function-level: the one place numpy is imported; see the module's docstring

    return numpy
