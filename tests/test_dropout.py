"""The CPU dropout of peftlab.train.dropout: torch's dropout rule (drop with probability p, scale the rest by
1 / (1 - p)), seeded by torch's generator, on a real tiny BERT (and its LoRA adapters) built from a config."""
from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import BertConfig, BertForSequenceClassification

from peftlab.train.dropout import ATTENTION, FastDropout, keep_scale, use_fast_dropout


def tiny_bert(dropout: float) -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, num_labels=2, hidden_dropout_prob=dropout,
                     attention_probs_dropout_prob=dropout)
    return BertForSequenceClassification(cfg)


def batch() -> dict:
    gen = torch.Generator().manual_seed(1)
    mask = torch.ones(4, 9, dtype=torch.long)
    mask[0, 5:] = 0
    mask[2, 3:] = 0
    return {"input_ids": torch.randint(0, 100, (4, 9), generator=gen), "attention_mask": mask}


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_each_lane_drops_at_rate_p_and_scales_the_rest(p):
    torch.manual_seed(0)
    n = 400_000
    m = keep_scale(torch.Size([n]), p)
    assert set(torch.unique(m).tolist()) == pytest.approx([0.0, 1.0 / (1.0 - p)])
    # one 64-bit draw gives four 16-bit lanes: each lane alone must drop at p (4 standard errors)
    for lane in range(4):
        dropped = float((m[lane::4] == 0).float().mean())
        assert abs(dropped - p) < 4 * math.sqrt(p * (1 - p) / (n / 4)), (lane, dropped)
    # the expectation is kept: E[x * m] = x
    assert float(m.mean()) == pytest.approx(1.0, abs=4 * math.sqrt(p / (1 - p) / n))


def test_fast_dropout_is_seeded_is_identity_in_eval_and_its_gradient_is_the_multiplier():
    x = torch.randn(8, 16, 32)
    d = FastDropout(0.25)
    torch.manual_seed(3)
    a = d(x)
    torch.manual_seed(3)
    b = d(x)
    assert torch.equal(a, b)
    torch.manual_seed(4)
    assert not torch.equal(a, d(x))
    kept = a != 0
    assert torch.allclose(a[kept], x[kept] / 0.75)
    d.eval()
    assert d(x) is x or torch.equal(d(x), x)
    d.train()
    xg = x.clone().requires_grad_()
    torch.manual_seed(5)
    y = d(xg)
    y.sum().backward()
    assert torch.allclose(xg.grad, torch.where(y != 0, 1 / 0.75, 0.0))


def test_swapped_model_computes_what_sdpa_computes_when_nothing_is_dropped():
    """p below 1/65536 rounds to no drop: then the swapped model (FastDropout everywhere, the attention's own
    math path) must give the logits of transformers' sdpa model, padding mask included."""
    model = tiny_bert(1e-6).train()
    before = model(**batch()).logits
    swapped = use_fast_dropout(model)
    assert swapped == 1 + 2 * 3 + 1   # embeddings, 3 per layer (attention's own p, its output, the FFN's), head
    assert model.config._attn_implementation == ATTENTION
    assert torch.allclose(model(**batch()).logits, before, atol=1e-5)


def test_attention_dropout_acts_on_the_probabilities_and_lora_dropouts_are_swapped():
    model = tiny_bert(0.0)
    model.config.attention_probs_dropout_prob = 0.5
    for layer in model.bert.encoder.layer:
        layer.attention.self.dropout.p = 0.5
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.2, target_modules=["query", "value"],
                                            task_type="SEQ_CLS"))
    n_lora = sum(1 for name, m in peft.named_modules() if "lora_dropout" in name and isinstance(m, torch.nn.Dropout))
    use_fast_dropout(peft)
    plain = [name for name, m in peft.named_modules() if type(m) is torch.nn.Dropout]
    assert plain == []
    assert n_lora == 4 and sum(isinstance(m, FastDropout) for m in peft.modules()) >= n_lora
    peft.train()
    torch.manual_seed(0)
    a = peft(**batch()).logits
    torch.manual_seed(0)
    assert torch.equal(a, peft(**batch()).logits)       # seeded
    torch.manual_seed(1)
    assert not torch.allclose(a, peft(**batch()).logits)   # and the attention really drops (no other dropout > 0
    peft.eval()                                              # but LoRA's, which starts at B = 0: no effect)
    e = peft(**batch()).logits
    assert torch.equal(e, peft(**batch()).logits)
