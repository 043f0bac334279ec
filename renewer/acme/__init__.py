"""acme adapters."""
