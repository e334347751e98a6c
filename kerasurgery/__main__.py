from kerasurgery.cli import main

raise SystemExit(main())
