"""A minimal Django project for the adapter tests (settings, URLs, sync and async views)."""
