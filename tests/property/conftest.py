"""Say, at the end of the run, how much the property suite actually exercised."""

from __future__ import annotations

import pytest

from tests.property.model import RUNS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RUNS:
        return
    terminalreporter.section("room lifecycle property suite")
    for machine in sorted({machine for machine, _ in RUNS}):
        counts = {event: n for (m, event), n in RUNS.items() if m == machine}
        details = ", ".join(
            f"{n} {event}"
            for event, n in sorted(counts.items())
            if event not in {"examples", "steps"}
        )
        terminalreporter.write_line(
            f"{machine}: {counts.get('examples', 0)} examples, {counts.get('steps', 0)} steps "
            f"(invariants checked after every step); {details}"
        )
