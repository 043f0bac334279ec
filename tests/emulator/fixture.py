"""Admin API emulator fixtures."""
