"""Essence: debug image classifiers with influence-directed explanations."""

__version__ = "0.1.0"
