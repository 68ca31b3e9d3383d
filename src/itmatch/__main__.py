from itmatch.cli import main

raise SystemExit(main())
