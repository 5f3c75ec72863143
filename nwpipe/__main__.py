from nwpipe.commands.cli import main

raise SystemExit(main())
