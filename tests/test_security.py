"""Security guarantees that need no pipeline run: no code from a model folder unless a param allows it, and review
text that cannot inject into the Markdown, HTML or LaTeX reports. (Pickle refusal: tests/test_sources.py; secrets
in the environment: tests/test_guarantees.py.)"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import build_tiny_model
from peftlab.core.errors import PeftlabError
from peftlab.modeling.load import ModelSetup, load_base
from peftlab.report.format import to_latex, to_markdown

EVIL = """import pathlib   # transformers copies this file to its modules cache: the marker path is absolute
pathlib.Path({marker!r}).write_text("the model folder's code ran")
from transformers import BertConfig, BertForSequenceClassification
class EvilConfig(BertConfig):
    model_type = "evilbert"
class EvilModel(BertForSequenceClassification):
    config_class = EvilConfig
"""


def model_with_code(root: Path) -> Path:
    """A tiny model whose config points transformers at a Python file in its folder, which marks its own run."""
    path = build_tiny_model(root / "evil", "encoder", "evil")
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(model_type="evilbert", auto_map={"AutoConfig": "evil_code.EvilConfig",
                                                 "AutoModelForSequenceClassification": "evil_code.EvilModel"})
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "evil_code.py").write_text(EVIL.format(marker=str(path / "EXECUTED")))
    return path


def setup_for(path: Path, trust: bool, flagged: bool = False) -> ModelSetup:
    info = {**json.loads((path / "peftlab.json").read_text()), "trust_remote_code": flagged}
    return ModelSetup(base_dir=str(path), info=info, head="classifier", labels=["negative", "positive"],
                      max_length=16, trust_remote_code=trust)


def test_code_in_a_model_folder_never_runs_unless_the_param_allows_it(tmp_path):
    path = model_with_code(tmp_path)
    with pytest.raises((ValueError, PeftlabError), match="trust_remote_code"):
        load_base(setup_for(path, trust=False), torch.device("cpu"))
    with pytest.raises(PeftlabError, match="set model.trust_remote_code: true"):   # catalog entries that need it
        load_base(setup_for(path, trust=False, flagged=True), torch.device("cpu"))
    assert not (path / "EXECUTED").exists()
    # the control: with model.trust_remote_code: true the same folder's code does run
    model = load_base(setup_for(path, trust=True), torch.device("cpu"))
    assert type(model).__name__ == "EvilModel" and (path / "EXECUTED").exists()


HOSTILE = ("</td><script>alert(1)</script> | **bold** [x](javascript:1) \\input{/etc/passwd} $x^2$ 100% #1 _a_ ~ & {}"
           "\nnew row")


def test_review_text_is_escaped_in_markdown_and_latex_reports():
    import pandas as pd

    df = pd.DataFrame({"method": ["m"], "example": [HOSTILE]})
    md = to_markdown(df)
    assert "<script>" not in md and "&lt;script&gt;" in md
    assert md.count("\n") == 3                      # header, rule, one row: the newline did not open a row
    row = md.splitlines()[2]
    assert row.count(" | ") == 1 and "\\|" in row   # the review's pipe is escaped, one real cell separator
    assert "\\*\\*bold\\*\\*" in row and "\\[x\\]\\(javascript:1\\)" in row
    tex = to_latex(df)
    assert "\\input{" not in tex and "\\textbackslash{}input\\{/etc/passwd\\}" in tex
    for raw, escaped in (("$x^2$", "\\$x\\textasciicircum{}2\\$"), ("100%", "100\\%"), ("#1", "\\#1"),
                         ("_a_", "\\_a\\_"), (" & ", " \\& ")):
        assert escaped in tex, raw
