"""Catalog and sources, streaming, cleaning, the split, and extra test sets."""
