"""The test-split stages: evaluate a trained run, the baselines, the speed benchmark."""
