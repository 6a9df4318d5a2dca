"""LoRA training with the Trainer: features, heads, dvclive, checkpoints and resume."""
