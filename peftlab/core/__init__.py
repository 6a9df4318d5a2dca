"""The bottom layer: errors, atomic io and hashing, metrics, and every output path."""
