"""Command modules: each parses options, calls the core, renders. No torch at import time."""
