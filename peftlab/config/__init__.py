"""The params schema (typed sections, every grammar) and its loader."""
