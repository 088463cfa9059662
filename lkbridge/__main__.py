"""`python -m lkbridge` runs the command line."""

from lkbridge.cli import main

raise SystemExit(main())
