import pytest
import yaml

from peftlab.config.params import LoraParams, SplitParams, TrainParams, build, load_params
from peftlab.core.errors import PeftlabError


def test_repo_params_file_is_valid():
    from conftest import REPO

    p = load_params(["seed", "data", "models", "model", "split", "lora", "train", "evaluate"],
                    REPO / "params.yaml")
    assert p.model.name in p.models
    assert p.lora.r >= 1 and p.train.lr > 0


@pytest.mark.parametrize("section,cls,raw,needle", [
    ("lora", LoraParams, {"r": 0}, "lora.r = 0 is invalid; allowed: a value >= 1"),
    ("train", TrainParams, {"lr": -1}, "train.lr = -1 is invalid; allowed: a value > 0"),
    ("train", TrainParams, {"lr": "fast"}, "train.lr = 'fast' is invalid; allowed: a number"),
    ("train", TrainParams, {"batch_size": 2.5}, "train.batch_size = 2.5 is invalid; allowed: an integer"),
    ("train", TrainParams, {"epochs": True}, "train.epochs = true is invalid; allowed: a number"),
    ("split", SplitParams, {"val": 0.5, "test": 0.6}, "split.val + split.test = 1.1 leaves no training data"),
    ("lora", LoraParams, {"rank": 8}, "unknown key lora.rank; allowed keys here: r, alpha, dropout"),
])
def test_bad_values_give_one_line_naming_key_value_and_allowed(section, cls, raw, needle):
    with pytest.raises(PeftlabError) as e:
        build(cls, raw, section)
    msg = str(e.value)
    assert needle in msg
    assert "\n" not in msg


def test_values_written_by_dvc_exp_set_parse_like_the_file(tmp_path):
    # `dvc exp run -S train.lr=1e-3` can store the string "1e-3" (YAML 1.1 needs a dot for a float).
    from_file = build(TrainParams, yaml.safe_load("lr: 0.001\nbatch_size: 16\ngroup_by_length: true"), "train")
    from_set = build(TrainParams, {"lr": "1e-3", "batch_size": "16", "group_by_length": "true"}, "train")
    assert from_file == from_set
    assert from_set.lr == 0.001 and from_set.batch_size == 16


def test_each_stage_reads_only_its_sections(tmp_path):
    (tmp_path / "params.yaml").write_text("seed: 7\nlora: {r: 0}\nsplit: {val: 0.2}\n")
    p = load_params(["seed", "split"], tmp_path / "params.yaml")   # a broken lora section is not split's concern
    assert p.seed == 7 and p.split.val == 0.2
    with pytest.raises(PeftlabError, match="lora.r = 0"):
        load_params(["lora"], tmp_path / "params.yaml")


def test_invalid_yaml_is_one_clear_line(tmp_path):
    (tmp_path / "params.yaml").write_text("seed: [1, 2\n")
    with pytest.raises(PeftlabError, match="not valid YAML"):
        load_params(["seed"], tmp_path / "params.yaml")
