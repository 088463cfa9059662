"""`python -m lkbridge` runs the command line."""

from lkbridge.cli.main import main

raise SystemExit(main())
