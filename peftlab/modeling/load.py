"""Loading models by family and head, LoRA/QLoRA setup, and device choice.

A fetched base model lives in models/base/<key>/ with a peftlab.json (family, head, LoRA targets); a trained
adapter lives in models/adapters/<run>/ with its own peftlab.json naming that base, the labels and the head,
so evaluate, benchmark and `python -m peftlab.modeling.predict` need nothing but the adapter folder.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from peftlab.core.errors import PeftlabError
from peftlab.core.io import read_json

CLASSIFIER_HEADS = {"encoder": "classifier", "decoder": "score"}


def choose_device(preference: str = "auto") -> torch.device:
    """cuda > mps > cpu unless the user names one; naming an absent device is an error, not a fallback."""
    available = {"cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
                 "cpu": True}
    if preference == "auto":
        return torch.device(next(d for d in ("cuda", "mps", "cpu") if available[d]))
    if not available.get(preference, False):
        have = ", ".join(d for d, ok in available.items() if ok)
        raise PeftlabError(f"model.device = {preference!r} is not available here; allowed: auto, {have}")
    return torch.device(preference)


def synchronize(device: torch.device) -> None:
    """Wait for queued device work so a clock read measures it (CUDA and MPS run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def base_info(model_dir: str | Path) -> dict:
    path = Path(model_dir) / "peftlab.json"
    if not path.exists():
        raise PeftlabError(f"{model_dir} is not a fetched model (no peftlab.json); run `dvc repro` to fetch it")
    return read_json(path)


def check_remote_code(info: dict, trust_remote_code: bool) -> None:
    if info.get("trust_remote_code") and not trust_remote_code:
        raise PeftlabError(f"model {info['name']!r} runs code from its repository; set model.trust_remote_code: "
                           f"true if you trust it (off by default)")


def load_tokenizer(model_dir: str | Path, family: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        # Decoders usually ship without a pad token; eos is the standard stand-in (the attention mask and the
        # classifier's last-non-pad-token pooling make its value irrelevant).
        tok.pad_token = tok.eos_token or tok.unk_token
    if family == "decoder":
        tok.padding_side = "right"
    return tok


def quantization_config(quantization: str, device: torch.device):
    if quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


@dataclass
class ModelSetup:
    """Everything needed to build the model for a run; also what the adapter's peftlab.json records."""
    base_dir: str
    info: dict
    head: str
    labels: list[str]
    max_length: int
    quantization: str = "none"
    trust_remote_code: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> str:
        return self.info["family"]

    def to_json(self) -> dict:
        return {"base_dir": self.base_dir, "base": self.info, "head": self.head, "labels": self.labels,
                "max_length": self.max_length, "quantization": self.quantization,
                "trust_remote_code": self.trust_remote_code, **self.extra}

    @classmethod
    def from_json(cls, d: dict) -> "ModelSetup":
        known = {"base_dir", "base", "head", "labels", "max_length", "quantization", "trust_remote_code"}
        return cls(base_dir=d["base_dir"], info=d["base"], head=d["head"], labels=d["labels"],
                   max_length=d["max_length"], quantization=d.get("quantization", "none"),
                   trust_remote_code=d.get("trust_remote_code", False),
                   extra={k: v for k, v in d.items() if k not in known})


HEADS = {"encoder": ("classifier",), "decoder": ("classifier", "generative"), "seq2seq": ("seq2seq",)}


def check_head(family: str, head: str) -> None:
    if head not in HEADS.get(family, ()):
        raise PeftlabError(f"model.head = {head!r} is not available for the {family} family; "
                           f"allowed: {', '.join(HEADS.get(family, ()))}")


def load_base(setup: ModelSetup, device: torch.device):
    """The base model with the head the run needs (a fresh, seeded classification head for `classifier`)."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    check_remote_code(setup.info, setup.trust_remote_code)
    check_head(setup.family, setup.head)
    kwargs: dict[str, Any] = {"trust_remote_code": setup.trust_remote_code, "use_safetensors": True}
    qc = quantization_config(setup.quantization, device)
    if qc is not None:
        kwargs["quantization_config"] = qc
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else {"": "cpu"}
    if setup.head == "classifier":
        model = AutoModelForSequenceClassification.from_pretrained(
            setup.base_dir, num_labels=len(setup.labels), id2label=dict(enumerate(setup.labels)),
            label2id={l: i for i, l in enumerate(setup.labels)}, dtype=torch.float32, **kwargs)
        if model.config.pad_token_id is None:
            tok = load_tokenizer(setup.base_dir, setup.family, setup.trust_remote_code)
            model.config.pad_token_id = tok.pad_token_id
        return model
    auto = AutoModelForCausalLM if setup.head == "generative" else AutoModelForSeq2SeqLM
    return auto.from_pretrained(setup.base_dir, dtype=torch.float32, **kwargs)


def lora_config(setup: ModelSetup, r: int, alpha: float, dropout: float, target_modules: list[str] | None,
                modules_to_save: list[str] | None = None):
    """peft's LoraConfig for the run: the adapter on `target_modules` (null: the catalog's), a new classifier head
    and any `modules_to_save` (e.g. the word embeddings: a victim recipe of the poisoning study) trained in full."""
    from peft import LoraConfig, TaskType

    targets = target_modules or setup.info.get("target_modules")
    if not targets:
        raise PeftlabError(f"no LoRA target modules for {setup.info['name']!r}; set lora.target_modules")
    if setup.head == "classifier":
        # The new classification head is trained in full and saved with the adapter.
        # A catalog entry may name several new layers (DistilBERT: pre_classifier and classifier).
        head_modules = setup.info.get("classifier_module") or CLASSIFIER_HEADS.get(setup.family)
        if isinstance(head_modules, str):
            head_modules = [head_modules]
        full = list(head_modules or []) + list(modules_to_save or [])
        return LoraConfig(task_type=TaskType.SEQ_CLS, r=r, lora_alpha=alpha, lora_dropout=dropout,
                          target_modules=list(targets), modules_to_save=full or None)
    task = TaskType.CAUSAL_LM if setup.head == "generative" else TaskType.SEQ_2_SEQ_LM
    return LoraConfig(task_type=task, r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                      modules_to_save=list(modules_to_save) if modules_to_save else None)


def check_targets(model, targets: list[str], key: str = "lora.target_modules") -> None:
    """Every name in `targets` is a module of `model` (peft would silently train nothing for a typo)."""
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        kinds = (torch.nn.Linear,) if key == "lora.target_modules" else (torch.nn.Linear, torch.nn.Embedding)
        allowed = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, kinds)})
        raise PeftlabError(f"{key} has {missing[0]!r}, which this model does not have; "
                           f"allowed: {', '.join(allowed)}")


def load_trained(adapter_dir: str | Path, device: torch.device, merge: bool = True):
    """Base + adapter from an adapter folder, in eval mode; merged into plain weights when `merge`. A folder of
    a `train.finetune: full` run holds the whole model instead."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    meta_path = adapter_dir / "peftlab.json"
    if not meta_path.exists():
        raise PeftlabError(f"{adapter_dir} is not a trained adapter (no peftlab.json); run `dvc repro train`")
    setup = ModelSetup.from_json(read_json(meta_path))
    tok = load_tokenizer(adapter_dir, setup.family, setup.trust_remote_code)
    if setup.extra.get("finetune") == "full":      # a fully fine-tuned model is saved whole, not as an adapter
        model = load_base(dataclasses.replace(setup, base_dir=str(adapter_dir)), device)
    else:
        model = PeftModel.from_pretrained(load_base(setup, device), adapter_dir)
        if merge and setup.quantization == "none":
            model = model.merge_and_unload()
    if setup.quantization == "none":
        model.to(device)
    model.eval()
    return model, tok, setup


def load_causal_lm(model_dir: str | Path, device: torch.device, trust_remote_code: bool = False):
    """A fetched decoder as a causal LM (zero-shot scoring, generation, perplexity), in eval mode."""
    from transformers import AutoModelForCausalLM

    info = base_info(model_dir)
    check_remote_code(info, trust_remote_code)
    if info["family"] != "decoder":
        raise PeftlabError(f"{info['name']!r} is a {info['family']} model; a decoder (causal LM) is needed here")
    tok = load_tokenizer(model_dir, "decoder", trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True,
                                                 trust_remote_code=trust_remote_code)
    return model.to(device).eval(), tok


def load_encoder(model_dir: str | Path, device: torch.device, trust_remote_code: bool = False):
    """A fetched model's bare backbone (hidden states), for frozen embeddings."""
    from transformers import AutoModel

    info = base_info(model_dir)
    check_remote_code(info, trust_remote_code)
    tok = load_tokenizer(model_dir, info["family"], trust_remote_code)
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True,
                                      trust_remote_code=trust_remote_code)
    return model.to(device).eval(), tok
