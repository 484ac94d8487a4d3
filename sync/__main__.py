"""`python -m sync` is the same as the `subregistry` command."""

from __future__ import annotations

from sync.cli import main

raise SystemExit(main())
