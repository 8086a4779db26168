"""`python -m connpin`: the same entry point as the `connpin` command."""

from connpin.cli import main

raise SystemExit(main())
