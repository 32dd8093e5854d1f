"""`python -m anoclip`: the command-line tool."""

from .cli import main

raise SystemExit(main())
