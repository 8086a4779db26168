"""`python -m connpin`: the same entry point as the `connpin` command, with `connpin ha
promote`'s commit of the peer's connections first, before the rest of connpin is imported
(`connpin.ha.fast`; the notify lines `connpin ha keepalived-notify` writes run this)."""

import sys

from connpin.ha import fast

fast.start(sys.argv[1:])

from connpin.cli import main  # noqa: E402 - after the fast path, on purpose

raise SystemExit(main())
