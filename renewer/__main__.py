"""``python -m renewer`` runs the command line."""

from renewer.cli import main

raise SystemExit(main())
