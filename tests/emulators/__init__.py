"""Loopback HTTP emulators of the external services the pipeline calls."""
