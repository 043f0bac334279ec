"""gateway adapters."""
