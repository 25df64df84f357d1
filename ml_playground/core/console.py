"""Plain console lines for the commands (rich without wrapping or markup)."""

from __future__ import annotations

from rich.console import Console


def say(console: Console, text: str) -> None:
    """One plain line: no wrapping, no markup (paths may hold brackets)."""
    console.print(text, soft_wrap=True, highlight=False, markup=False)
