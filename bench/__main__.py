"""Allow `python -m bench` as well as the `bench` console script."""

from bench.cli import main

main()
