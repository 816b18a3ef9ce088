"""Entry point of `python -m app`."""

from app.cli import cli

cli(prog_name="python -m app")
