"""`python -m anoclip`: the command-line tool."""

from anoclip.cli import main

raise SystemExit(main())
