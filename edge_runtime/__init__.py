"""mtad edge runtime: torch-free front end, scoring, bundle loading and inference.

This package is the single source of truth for features and scoring. It must import
nothing heavier than numpy at package import time (tests/test_imports.py checks it).
"""

__version__ = "0.1.0"
