"""`python -m udcbench.cli`: the same as the `udcbench` command."""

from udcbench.cli import main

main()
