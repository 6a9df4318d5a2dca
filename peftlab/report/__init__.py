"""Tables (Markdown, LaTeX, csv: one formatter) and figures (one plot module)."""
