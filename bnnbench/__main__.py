"""`python -m bnnbench` runs the command-line interface."""

from bnnbench.cli import main

main()
