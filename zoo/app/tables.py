"""Tables of the ``zoo`` command that stay readable at any width (80 columns when output is redirected).

A table is printed as a table when it fits the console without wrapping any cell (rich would
otherwise cut names and paths with an ellipsis, or fold them); otherwise as one block per row: the
row's first cell as a heading, then one ``column: value`` line per other cell. Headings and block
lines are printed unbroken (``soft_wrap``): a name or a path is always whole on one line, ready to copy.
"""

from __future__ import annotations

import sys

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["compact_table", "print_heading", "print_table"]


def compact_table(caption: str | None = None) -> Table:
    """A table without vertical rules, two spaces between columns, a rule under the header."""
    return Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
        caption=caption,
        caption_justify="left",
    )


def print_heading(console: Console, text: str) -> None:
    """One bold line, never broken by the console (it may name a path)."""
    console.print(Text(text, style="bold"), soft_wrap=True)


def print_table(console: Console, heading: str, table: Table) -> None:
    """Print ``heading``, then ``table`` if it fits ``console.width`` unwrapped, else its rows as blocks.

    A row whose cells after the first are all empty (a section title) is printed as its first cell
    alone. Headers may hold line breaks to stay narrow (``"lower/\\nupper"``).
    """
    print_heading(console, heading)
    unwrapped = console.measure(table, options=console.options.update_width(sys.maxsize)).maximum
    if unwrapped <= console.width:
        console.print(table)
        return
    headers = [str(column.header).replace("/\n", "/").replace("\n", " ") for column in table.columns]
    for row in zip(*(column.cells for column in table.columns), strict=True):
        console.print()
        console.print(_text(row[0]), soft_wrap=True)
        for header, cell in zip(headers[1:], row[1:], strict=True):
            if str(cell):
                console.print(Text(f"  {header}: "), _text(cell), sep="", soft_wrap=True)
    console.print()
    if table.caption:
        console.print(_text(table.caption))


def _text(cell: object) -> Text:
    return cell if isinstance(cell, Text) else Text.from_markup(str(cell))
