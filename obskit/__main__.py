"""``python -m obskit`` runs the obskit CLI."""

from obskit.cli import main

raise SystemExit(main())
