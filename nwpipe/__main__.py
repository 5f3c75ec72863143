from nwpipe.cli import main

raise SystemExit(main())
