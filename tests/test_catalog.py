"""The model catalog: Hub entries resolve with sane heads and LoRA targets; gated, remote-code and chat-template
edge cases fail or adapt the way a user would expect."""
from __future__ import annotations

import pytest

from conftest import make_tokenizer
from peftlab.core.errors import PeftlabError
from peftlab.data.fetch import model_entry
from peftlab.data.sources import fetch_model_files, load_catalog
from peftlab.modeling.load import HEADS, ModelSetup, check_remote_code, lora_config
from peftlab.modeling.predict import chat_prompt

HUB_MODELS = ["distilbert-base-uncased", "roberta-base", "stella-en-400m-v5", "t5-small", "flan-t5-large",
              "qwen25-15b-instruct", "smollm2-17b-instruct", "tinyllama-11b-chat", "gemma2-2b-it",
              "phi3-mini-4k-instruct", "llama31-8b-instruct"]


@pytest.mark.parametrize("key", HUB_MODELS)
def test_hub_catalog_entries_resolve_with_a_head_their_family_supports(key):
    catalog = load_catalog()
    entry = model_entry(key, {key: {}}, catalog)
    assert entry["source"].startswith("hf:")
    assert entry["head"] in HEADS[entry["family"]]
    assert entry["target_modules"] and all(isinstance(t, str) for t in entry["target_modules"])


def test_remote_code_model_is_refused_unless_the_param_allows_it():
    entry = model_entry("stella-en-400m-v5", {"stella-en-400m-v5": {}})
    with pytest.raises(PeftlabError, match="model.trust_remote_code: true"):
        check_remote_code(entry, trust_remote_code=False)
    check_remote_code(entry, trust_remote_code=True)


@pytest.mark.parametrize("key", ["gemma2-2b-it", "llama31-8b-instruct"])
def test_gated_model_without_a_token_fails_before_downloading(key, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))      # no stored login either
    entry = model_entry(key, {key: {}})
    with pytest.raises(PeftlabError, match=rf"model '{key}' .* is gated and no Hugging Face token is set; "
                                           r"accept its license on the Hub, then export HF_TOKEN"):
        fetch_model_files(entry, tmp_path / "dest")
    assert not (tmp_path / "hf-home" / "hub").exists()


def test_distilbert_trains_both_new_classifier_layers(tmp_path):
    from peft import get_peft_model
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    cfg = DistilBertConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2, hidden_dim=64, num_labels=2)
    model = DistilBertForSequenceClassification(cfg)
    entry = model_entry("distilbert-base-uncased", {"distilbert-base-uncased": {}})
    setup = ModelSetup(base_dir=str(tmp_path), info=entry, head="classifier", labels=["a", "b"], max_length=16)
    peft_model = get_peft_model(model, lora_config(setup, r=4, alpha=8, dropout=0.0, target_modules=None))
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("pre_classifier" in n for n in trainable) and any(".classifier." in n for n in trainable)
    assert any("q_lin.lora_A" in n for n in trainable)
    assert not any("ffn" in n for n in trainable)


GEMMA_LIKE = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
              "{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
              "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n"
              "{% endif %}")


def test_chat_template_without_a_system_role_gets_the_system_text_in_the_user_turn():
    tok = make_tokenizer("decoder")
    tok.chat_template = GEMMA_LIKE
    text = chat_prompt(tok, "Classify the review.", "good film", prefill="Sentiment:",
                       demos=[("bad film", "negative")])
    assert text == ("<start_of_turn>user\nClassify the review.\n\nbad film<end_of_turn>\n"
                    "<start_of_turn>model\nnegative<end_of_turn>\n"
                    "<start_of_turn>user\ngood film<end_of_turn>\n<start_of_turn>model\nSentiment:")
    # a template error that has nothing to do with the system role is not swallowed
    tok.chat_template = "{{ raise_exception('Conversation roles must alternate') }}"
    with pytest.raises(Exception, match="alternate"):
        chat_prompt(tok, "Classify the review.", "good film")
