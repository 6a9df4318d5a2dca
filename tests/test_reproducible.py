"""The pieces of crash-resume and identical reruns that a pipeline run cannot aim at: a kill in the middle of a
checkpoint save, the loss bookkeeping of a resumed run, and set-ordered adapter configs."""
from __future__ import annotations

import json

from peftlab.train.checkpoints import last_complete_checkpoint, sorted_adapter_config, whole_run_train_loss


def test_resume_skips_and_removes_a_checkpoint_killed_mid_save(tmp_path):
    for step, state in ((10, '{"global_step": 10}'), (20, '{"global_step": 20}'), (30, '{"global_st'), (40, None)):
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        (ckpt / "adapter_model.safetensors").write_bytes(b"x")
        if state is not None:                      # 30: trainer_state.json cut short; 40: never written
            (ckpt / "trainer_state.json").write_text(state)
    (tmp_path / "fingerprint.json").write_text("{}")
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-20")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-20", "fingerprint.json"]
    assert last_complete_checkpoint(tmp_path / "checkpoint-10") is None


def test_train_loss_of_a_resumed_run_covers_every_step():
    losses = [0.9, 0.7, 0.5, 0.4, 0.3, 0.2]       # per step; logged every 2 steps, checkpoint at step 4
    history = [{"loss": (losses[0] + losses[1]) / 2, "step": 2}, {"loss": (losses[2] + losses[3]) / 2, "step": 4},
               {"eval_loss": 0.5, "step": 4}, {"loss": (losses[4] + losses[5]) / 2, "step": 6}]
    session = (losses[4] + losses[5]) / 2        # what the Trainer reports after resuming at step 4
    assert abs(whole_run_train_loss(history, 4, session, 6) - sum(losses) / 6) < 1e-12
    assert whole_run_train_loss(history, 0, 0.55, 6) == 0.55      # not resumed: the Trainer's value as is


def test_adapter_config_lists_target_modules_in_a_fixed_order(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=16))
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["value", "query", "key"]))
    assert isinstance(peft_model.peft_config["default"].target_modules, set)   # peft's own type: hash order
    sorted_adapter_config(peft_model)
    peft_model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["target_modules"] == ["key", "query", "value"]
