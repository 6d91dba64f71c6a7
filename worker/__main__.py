from worker.entry import main

raise SystemExit(main())
