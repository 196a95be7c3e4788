"""`python -m cai_kit.cli`: the same as the `cai` command."""

from cai_kit.cli import main

main()
