"""`python -m nasgraph`, the same as the `nasgraph` command."""

from nasgraph.cli import main

main()
