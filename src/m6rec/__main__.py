"""`python -m m6rec ...`: the m6rec command line (see m6rec.cli)."""

from m6rec.cli import main

raise SystemExit(main())
