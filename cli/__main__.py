"""`python -m cli`, the same as the `robopt` console script."""

from cli.app import main

main()
