"""`python -m cli`: the `triage` command."""

from cli.main import main

main()
