"""Entry point: ``python -m shared.local serve | post-event FILE | replay``."""
from shared.local.cli import main

raise SystemExit(main())
