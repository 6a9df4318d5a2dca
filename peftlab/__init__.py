"""peftlab: LoRA/QLoRA text classification as a reproducible DVC pipeline.

Subpackages, lowest layer first (a lower one never imports a higher one; pyproject.toml's import-linter
contract checks it): core, config, data, modeling | report, train | evaluate, poison, compare, dashboard.
"""
