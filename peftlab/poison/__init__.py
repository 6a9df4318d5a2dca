"""Data poisoning: attacks by name, the runs that train on them, defenses, the summary."""
