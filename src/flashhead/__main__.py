from flashhead.cli import main

raise SystemExit(main())
