"""Leaf helpers: each imports nothing from the project (``tests/unit/test_layout.py``)."""
