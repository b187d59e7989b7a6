"""`python -m consumer ...`: see consumer.cli."""

from consumer.cli import main

raise SystemExit(main())
