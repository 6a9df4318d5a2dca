"""Loading by family and head, LoRA/QLoRA setup, device choice, prompts, the one inference path."""
