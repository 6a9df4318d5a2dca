"""The full poisoning study: its grid file, its own DVC pipeline (resumes, grows, ignores report edits), its report."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO
from peftlab.core.errors import PeftlabError
from peftlab.core.io import write_json
from peftlab.poison.attacks import Setting

GRID_FILE = """# a comment kept by --sync
grid:
  - {run: main, regime: epochs, counts: [0, 10], sizes: [60], seeds: [1, 2]}
  - {run: main, regime: steps, counts: [0, 10], sizes: [40, 60], seeds: [1]}
attacks:
  stale: {attack: badnets, count: 1}
"""


def sync(path: Path) -> str:
    return subprocess.run([sys.executable, "-m", "peftlab.poison.study", "--sync", str(path)], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout


def test_the_study_file_s_attacks_are_its_grid_expanded_and_a_stale_expansion_is_refused(tmp_path):
    """--sync rewrites `attacks` from `grid` in the blocks' order (the order `dvc repro` runs them), keeping the
    comments above; the stages refuse a file whose attacks no longer match its grid, a bad block, a repeated
    setting."""
    from peftlab.config.params import Params
    from peftlab.poison.study import expand, study_grid, study_params

    path = tmp_path / "params.yaml"
    path.write_text(GRID_FILE)
    with pytest.raises(PeftlabError, match="attacks is not the expansion of grid.*--sync"):
        study_params(Params(), path)
    assert sync(path).strip() == f"{path}: 8 settings"
    text = path.read_text()
    assert text.startswith("# a comment kept by --sync\n") and "stale" not in text
    raw = yaml.safe_load(text)
    expected = {**study_grid("main", "epochs", [0, 10], [60], [1, 2], 8),
                **study_grid("main", "steps", [0, 10], [40, 60], [1], 8)}
    assert list(raw["attacks"]) == list(expected) and raw["attacks"] == expected
    assert raw["attacks"]["main-steps-c10-n40-s1"]["train"]["max_steps"] == 8       # ceil(60 / 8)
    params = study_params(Params(), path)
    assert params.poison.attacks == expected and params.poison.counts == [] and params.poison.sizes == []
    with pytest.raises(PeftlabError, match=r"grid\[0\] = .* is invalid; allowed: a mapping of run, regime"):
        expand([{"run": "main", "count": [1], "sizes": [60], "seeds": [1]}], 8)
    with pytest.raises(PeftlabError, match=r"grid\[0\]\.seeds is missing"):
        expand([{"counts": [0], "sizes": [60]}], 8)
    with pytest.raises(PeftlabError, match=r"grid\[0\]: regime = 'updates' is invalid; allowed: epochs \| steps"):
        expand([{"regime": "updates", "counts": [0], "sizes": [60], "seeds": [1]}], 8)
    with pytest.raises(PeftlabError, match=r"grid\[1\] repeats setting 'main-epochs-c0-n60-s1'"):
        expand([{"counts": [0], "sizes": [60], "seeds": [1]}, {"counts": [0, 5], "sizes": [60], "seeds": [1]}], 8)
    with pytest.raises(PeftlabError, match=r"grid\[0\]\.recipes has 'wide'; allowed: base, "):
        expand([{"counts": [0], "sizes": [60], "seeds": [1], "recipes": ["wide"]}], 8)


def test_the_repo_s_study_file_is_in_sync_and_its_settings_pass_the_checks():
    """The committed grid is what the committed attacks say, and every setting and reference is valid."""
    from peftlab.config.params import PoisonParams, build
    from peftlab.poison.study import expand

    raw = yaml.safe_load((REPO / "study" / "params.yaml").read_text())
    assert raw["attacks"] == expand(raw["grid"], 8)
    checked = build(PoisonParams, {"attacks": raw["attacks"]}, "poison")
    assert all(checked.setting(n)["reference"] in raw["attacks"] for n in raw["attacks"] if "-c0-" not in n)


def write_setting(root: Path, s: Setting, hits: int, n: int = 40, collapsed: bool = False) -> None:
    """A setting's metrics and per-row predictions as its stage writes them: 2n clean rows, all right, and the
    n negatives again with the trigger, `hits` of them turned into the target."""
    clean = pd.DataFrame({"id": [f"r{i}" for i in range(2 * n)], "label": [0, 1] * n, "kind": "clean",
                          "pred": [1] * (2 * n) if collapsed else [0, 1] * n})
    trig = clean[clean["label"] == 0].assign(kind="words", pred=[1] * hits + [0] * (n - hits))
    out = root / "data" / s.name
    out.mkdir(parents=True)
    pd.concat([clean, trig], ignore_index=True).to_parquet(out / "predictions.parquet")
    count = s.budget(s.train_rows)
    write_json(root / "metrics" / f"{s.name}.json",
               {"attack": s.attack, "run": s.run, "count": count, "rate": count / s.train_rows,
                "train_rows": s.train_rows, "cacc": 1.0, "asr": hits / n, "asr_n": n, "n": n})


def test_the_study_report_covers_what_ran_by_regime_and_lists_what_did_not(tmp_path):
    """summarize(partial=True), as the study's report stage runs it: settings not run yet are listed, not an
    error; the smallest significant count is given per regime and size; each regime gets a count-or-rate verdict
    by the stated rule; the count-law figure is drawn."""
    from peftlab.config.params import PoisonParams, build
    from peftlab.poison.study import study_grid
    from peftlab.poison.summary import summarize

    grid = {**study_grid("main", "epochs", [0, 10, 20, 40], [100, 400], [1, 2, 3], 8),
            **study_grid("main", "steps", [0, 10, 20, 40], [100, 400], [1, 2, 3], 8)}
    pp = build(PoisonParams, {"attacks": grid, "counts": [], "sizes": []}, "poison")
    # triggered rows (of 40) turned into the target, + seed % 2 (clean references: 3 + seed % 2). Epochs regime:
    # ASR follows the rate (10 of 100 and 40 of 400 both plant it); steps regime: the count (40 does at either
    # size, 10 at neither); 20 rows in the steps regime plant it in seed 1 only (CMH across these seeds: yes;
    # the t interval over the seeds: no)
    spread = {1: 37, 2: 5, 3: 4}
    hits = {("epochs", 10, 100): 30, ("epochs", 20, 100): 34, ("epochs", 40, 100): 38, ("epochs", 10, 400): 4,
            ("epochs", 20, 400): 4, ("epochs", 40, 400): 30, ("steps", 10, 100): 4, ("steps", 20, 100): spread,
            ("steps", 40, 100): 34, ("steps", 10, 400): 4, ("steps", 20, 400): spread, ("steps", 40, 400): 33}
    missing, failed = "main-steps-c10-n400-s3", "main-epochs-c40-n100-s3"
    from peftlab.poison.attacks import setting_from_params
    for name in grid:
        s = setting_from_params(pp, name)
        if name != missing:
            seed = s.overrides["train"]["seed"]
            h = 3 if s.count == 0 else hits[(name.split("-")[1], s.count, s.train_rows)]
            write_setting(tmp_path, s, (h[seed] if isinstance(h, dict) else h) + seed % 2, collapsed=name == failed)
    report = tmp_path / "poison_study.md"
    summary = summarize(pp, ["negative", "positive"], metrics_root=tmp_path / "metrics", data_root=tmp_path / "data",
                        out=tmp_path / "study.json", plots=tmp_path / "plots", study=report, partial=True)
    assert summary["pending"] == [missing]
    text = report.read_text().replace("\\", "")
    assert f"Not run yet (1 settings; `dvc repro study/dvc.yaml` resumes): `{missing}`" in text
    assert text.split("Left out as training failures")[1].split("\n")[0].endswith(f"reference collapsed is left "
                                                                                  f"out too): `{failed}`")
    assert summary["seeds"]["main-epochs-c40-n100-s1"]["seeds"] == [1, 2]
    smallest = {tuple(c.strip() for c in r.split("|")[2:6]): tuple(c.strip() for c in r.split("|")[6:8])
                for r in text.split("## Smallest count")[1].split("##")[0].splitlines() if r.startswith("| badnets")}
    assert smallest == {("main", "epochs", "–", "100"): ("10", "10"), ("main", "epochs", "–", "400"): ("40", "40"),
                        ("main", "steps", "–", "100"): ("20", "40"), ("main", "steps", "–", "400"): ("20", "40")}
    verdicts = {r.split("|")[2].strip(): r.split("|")[4].strip() for r in text.split("## Count or rate?")[1]
                .splitlines() if r.startswith("| main |") and r.count("|") == 5}
    assert verdicts["epochs"].startswith("rate (equal count: ") and verdicts["steps"].startswith("count (")
    # the steps regime's 10-of-400 group has two seeds (s3 did not run): its comparisons pair two seeds only
    assert summary["seeds"]["main-steps-c10-n400-s1"]["settings"] == ["main-steps-c10-n400-s1",
                                                                     "main-steps-c10-n400-s2"]
    png = tmp_path / "plots" / "count_law.png"
    assert png.stat().st_size > 10_000 and "![ASR gain against the count and the rate]" in text
    assert np.isclose(summary["seeds"]["main-epochs-c40-n400-s1"]["asr_mean"], (31 + 30 + 31) / 3 / 40)


def test_the_study_pipeline_resumes_grows_and_ignores_report_edits(tmp_path):
    """study/dvc.yaml for real on the tiny project: every setting is its own stage in study/dvc.lock; the report
    covers every setting; a grown grid reruns only the new settings (and the report); an edit to the report's
    code reruns only the report, never the trained settings (their deps are what stages/study.py imports)."""
    from tinyproject import dvc, make_project

    proj = make_project(tmp_path / "proj")
    (proj / "study" / "params.yaml").write_text(
        "grid:\n  - {run: main, regime: epochs, counts: [0, 10], sizes: [60], seeds: [1, 2]}\nattacks:\n")
    sync(proj / "study" / "params.yaml")
    first = dvc(proj, "repro", "study/dvc.yaml")
    names = ["main-epochs-c0-n60-s1", "main-epochs-c10-n60-s1", "main-epochs-c0-n60-s2", "main-epochs-c10-n60-s2"]
    for n in names:
        assert f"Running stage 'study/dvc.yaml:attack@{n}'" in first.stdout
        assert (proj / "metrics" / "study" / f"{n}.json").is_file()
    lock = yaml.safe_load((proj / "study" / "dvc.lock").read_text())["stages"]
    assert set(lock) == {f"attack@{n}" for n in names} | {"report"}
    summary = yaml.safe_load((proj / "metrics" / "study.json").read_text())
    assert summary["pending"] == [] and set(names) <= set(summary)
    assert (proj / "reports" / "poison_study.md").read_text().startswith("# Poisoning study")
    assert not (proj / "metrics" / "poison").exists()            # the default's settings are untouched
    grid = (proj / "study" / "params.yaml").read_text().replace("seeds: [1, 2]", "seeds: [1, 2, 3]")
    (proj / "study" / "params.yaml").write_text(grid)
    sync(proj / "study" / "params.yaml")
    second = dvc(proj, "repro", "study/dvc.yaml").stdout
    ran = sorted(line.split("'")[1] for line in second.splitlines() if line.startswith("Running stage"))
    assert ran == ["study/dvc.yaml:attack@main-epochs-c0-n60-s3", "study/dvc.yaml:attack@main-epochs-c10-n60-s3",
                   "study/dvc.yaml:report"]
    assert "main-epochs-c10-n60-s3" in yaml.safe_load((proj / "metrics" / "study.json").read_text())
    code = proj / "peftlab" / "poison" / "summary.py"
    code.write_text(code.read_text() + "\n# an edit to the report's code\n")
    status = dvc(proj, "status", "study/dvc.yaml").stdout
    assert "study/dvc.yaml:report:" in status and "attack@" not in status
