"""solvers adapters."""
