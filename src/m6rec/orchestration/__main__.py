"""`python -m m6rec.orchestration ...` (see m6rec.orchestration.cli)."""

from m6rec.orchestration.cli import main

raise SystemExit(main())
