from connpin.cli import main

raise SystemExit(main())
