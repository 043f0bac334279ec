"""state adapters."""
