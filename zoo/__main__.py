"""``python -m zoo`` is the ``zoo`` command."""

from zoo.app.cli import app

app(prog_name="zoo")
