"""`python -m nasgraph.cli`."""

from nasgraph.cli import main

main()
