"""``python -m synthviews.cli``: the same command line as ``synthviews``."""

from .app import main

raise SystemExit(main())
