"""peftlab: LoRA/QLoRA text classification as a reproducible DVC pipeline."""
from peftlab.core.errors import PeftlabError

__all__ = ["PeftlabError"]
__version__ = "0.1.0"
