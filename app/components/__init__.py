"""Reusable pieces of the app's pages; each owns its widget keys."""
