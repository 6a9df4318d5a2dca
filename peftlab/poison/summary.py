"""The poison_report stage: every setting paired with its clean reference, and the count-sweep figure.

What each number means (one definition for every attack and family), from the saved per-row predictions:
- ASR: share of the triggered non-target test rows predicted as the target.
- ref_asr: the clean reference model's rate on the very same triggered rows (a model never poisoned also
  calls some negatives positive: that share is not the attack's doing).
- asr_gain = ASR - ref_asr, with McNemar's exact test on the paired rows and a 95% CI.
- flip_rate: of the non-target rows the poisoned model gets right without the trigger, the share the trigger
  turns into the target (the backdoor's own effect, free of the rows the model already got wrong).
Label flip inserts no trigger, so it gets no ASR: its effect is the CACC drop and the per-class recall.
- collapsed: the victim predicts one class for >= 95% of the clean test rows (core.metrics.collapse): its ASR is
  that class's share, not a backdoor, and the report says so instead of showing a gain.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from peftlab.config.params import PoisonParams
from peftlab.core import paths
from peftlab.core.errors import PeftlabError
from peftlab.core.io import atomic_path, read_json, write_json
from peftlab.core.metrics import collapse
from peftlab.poison.attacks import ATTACKS, Setting, setting_from_params, sweep_settings

Z95 = 1.959964   # two-sided 95% normal quantile


def paired_gain(hit: np.ndarray, ref_hit: np.ndarray) -> dict:
    """Paired difference of two rates on the same rows (hit: the poisoned model predicts the target; ref_hit:
    the clean reference does): McNemar's exact test (statsmodels) and the Wald interval of a paired difference,
    (b - c) / n +- z * sqrt(b + c - (b - c)^2 / n) / n with b, c the discordant counts (statsmodels gives the
    test but no interval for a paired difference of proportions)."""
    from statsmodels.stats.contingency_tables import mcnemar

    hit, ref_hit = np.asarray(hit, bool), np.asarray(ref_hit, bool)
    n = len(hit)
    b, c = int(np.sum(hit & ~ref_hit)), int(np.sum(~hit & ref_hit))
    both, neither = int(np.sum(hit & ref_hit)), int(np.sum(~hit & ~ref_hit))
    gain = (b - c) / n if n else float("nan")
    half = Z95 * math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n if n else float("nan")
    p = float(mcnemar([[both, b], [c, neither]], exact=True).pvalue) if b + c else 1.0
    return {"asr_gain": gain, "asr_gain_ci": [gain - half, gain + half], "mcnemar_p": p,
            "discordant": [b, c]}


def flip_rate(preds: pd.DataFrame, kind: str, target: int) -> float:
    """Of the triggered rows whose clean version the model predicts right, the share predicted as the target."""
    clean = preds[preds["kind"] == "clean"].set_index("id")
    trig = preds[preds["kind"] == kind].set_index("id")
    right = clean.loc[trig.index, "pred"] == trig["label"]
    return float(np.mean(trig.loc[right, "pred"] == target)) if right.any() else float("nan")


def class_recall(preds: pd.DataFrame, labels: list[str]) -> dict[str, float]:
    clean = preds[preds["kind"] == "clean"]
    return {name: float(np.mean(clean.loc[clean["label"] == i, "pred"] == i)) if (clean["label"] == i).any()
            else float("nan") for i, name in enumerate(labels)}


def pair_with_reference(setting: Setting, preds: pd.DataFrame, ref: pd.DataFrame | None, target: int,
                        labels: list[str]) -> dict:
    """The paired metrics of one setting against its clean reference's predictions (None: no reference)."""
    kind = ATTACKS[setting.attack].test_trigger
    out: dict = {}
    if kind is None:                                   # label flip: what it does to the classes
        out["recall"] = class_recall(preds, labels)
        if ref is not None:
            out["ref_recall"] = class_recall(ref, labels)
        return out
    out["flip_rate"] = flip_rate(preds, kind, target)
    if ref is not None:
        trig, ref_trig = shared_rows(preds, ref, kind)
        out["ref_asr"] = float(np.mean(ref_trig["pred"] == target))
        out.update(paired_gain(trig["pred"].to_numpy() == target, ref_trig["pred"].to_numpy() == target))
    return out


def shared_rows(preds: pd.DataFrame, ref: pd.DataFrame, kind: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows of `kind` both models were scored on, aligned by id (a decoder setting may score a subset)."""
    a, b = preds[preds["kind"] == kind].set_index("id"), ref[ref["kind"] == kind].set_index("id")
    ids = a.index.intersection(b.index).sort_values()
    if not len(ids):
        raise PeftlabError(f"no {kind} test rows shared with the clean reference: score both on the same rows "
                           f"(poison.attacks.<name>.test_rows and the seed)")
    return a.loc[ids], b.loc[ids]


def train_seed(setting: Setting) -> int | None:
    """The setting's own `train: {seed: N}` (None: the top-level seed)."""
    return setting.overrides.get("train", {}).get("seed")


def recipe(setting: Setting) -> dict:
    """The victim's recipe overrides ("section.key" -> value) apart from the training seed."""
    return {k: v for k, v in setting.overrides_flat().items() if k != "train.seed"}


def recipe_key(setting: Setting) -> tuple:
    """Attack, attacked run and recipe (seed aside): what two sizes must share to be compared."""
    return setting.attack, setting.run, tuple(sorted((k, repr(v)) for k, v in recipe(setting).items()))


def replicate_key(setting: Setting) -> tuple:
    """What a setting is apart from its training seed (`train: {seed: N}`): settings with the same key are seed
    replicates of one experiment (same rows poisoned, same data, another init, dropout and batch order)."""
    return recipe_key(setting), setting.count, setting.rate, setting.train_rows, setting.test_rows


def hit_table(preds: pd.DataFrame, other: pd.DataFrame, kind: str, target: int) -> np.ndarray:
    """2 x 2 counts of two models on the `kind` rows both scored: (predicts the target, does not), one row each:
    a stratum of the CMH tests below."""
    a, b = shared_rows(preds, other, kind)
    ha, hb = int((a["pred"] == target).sum()), int((b["pred"] == target).sum())
    return np.array([[ha, len(a) - ha], [hb, len(b) - hb]], dtype=float)


def clean_accuracy(preds: pd.DataFrame) -> float:
    """A victim's accuracy on the clean test rows it was scored on."""
    clean = preds[preds["kind"] == "clean"]
    return float(np.mean(clean["pred"] == clean["label"]))


def t_interval(values: list[float]) -> list[float]:
    """95% t interval of the mean over seeds."""
    from scipy import stats

    k, m = len(values), float(np.mean(values))
    half = float(stats.t.ppf(0.975, k - 1)) * float(np.std(values, ddof=1)) / math.sqrt(k)
    return [m - half, m + half]


def across_seeds(settings: list[Setting], preds: dict[str, pd.DataFrame], target: int,
                 collapsed: dict[str, bool]) -> dict[str, dict]:
    """Seed replicates pooled: per group of >= 2 settings differing only in train.seed, each paired with its
    clean reference on the shared triggered rows (collapsed victims left out), the mean ASR and ASR gain with a
    95% t interval over the seeds, and the Cochran-Mantel-Haenszel test of "poisoned and clean models hit the
    target equally often" with the seeds as strata (statsmodels' StratifiedTable; pooled odds ratio and its CI).
    Groups are keyed by their first setting's name; `cmh_p_holm` is Holm-corrected over the groups."""
    from statsmodels.stats.contingency_tables import StratifiedTable
    from statsmodels.stats.multitest import multipletests

    groups: dict[tuple, list[Setting]] = {}
    for s in settings:
        kind = ATTACKS[s.attack].test_trigger
        ref = s.reference_name()
        if kind is not None and ref in preds and not collapsed.get(s.name) and not collapsed.get(ref):
            groups.setdefault(replicate_key(s), []).append(s)
    out: dict[str, dict] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        tables = [hit_table(preds[s.name], preds[s.reference_name()], ATTACKS[s.attack].test_trigger, target)
                  for s in members]
        asr = [t[0, 0] / t[0].sum() for t in tables]
        cacc = [clean_accuracy(preds[s.name]) for s in members]
        gain = [t[0, 0] / t[0].sum() - t[1, 0] / t[1].sum() for t in tables]
        st = StratifiedTable(tables)
        with np.errstate(divide="ignore", invalid="ignore"):
            lo, hi = st.oddsratio_pooled_confint()
        out[members[0].name] = {
            "settings": [s.name for s in members],
            "seeds": [train_seed(s) for s in members],
            "asr_mean": float(np.mean(asr)), "asr_ci": t_interval(asr),
            "cacc_mean": float(np.mean(cacc)), "cacc_ci": t_interval(cacc),
            "gain_mean": float(np.mean(gain)), "gain_ci": t_interval(gain),
            "cmh_p": float(st.test_null_odds(correction=True).pvalue),
            "pooled_or": float(st.oddsratio_pooled), "pooled_or_ci": [float(lo), float(hi)]}
    if out:
        holm = multipletests([g["cmh_p"] for g in out.values()], method="holm")[1]
        for g, p in zip(out.values(), holm):
            g["cmh_p_holm"] = float(p)
    return out


def count_or_rate(settings: list[Setting], preds: dict[str, pd.DataFrame], seeds: dict[str, dict],
                  target: int) -> list[dict]:
    """Does ASR follow the count or the rate? For every two seed groups of one attack, run and recipe at two
    training sizes with the same count (and, separately, the same rate), the CMH test across the seeds that
    both models hit the target on the same triggered rows equally often, Holm-corrected over all comparisons.
    ASR follows the count if the equal-count pairs do not differ while the equal-rate pairs do."""
    from statsmodels.stats.contingency_tables import StratifiedTable
    from statsmodels.stats.multitest import multipletests

    by_name = {s.name: s for s in settings}
    groups = [(name, [by_name[n] for n in g["settings"]]) for name, g in seeds.items()]
    out = []
    for i, (a_name, a) in enumerate(groups):
        for b_name, b in groups[i + 1:]:
            sa, sb = a[0], b[0]
            if (recipe_key(sa) != recipe_key(sb) or sa.train_rows == sb.train_rows or not sa.train_rows
                    or not sb.train_rows):
                continue
            rate_a, rate_b = sa.budget(sa.train_rows) / sa.train_rows, sb.budget(sb.train_rows) / sb.train_rows
            kind = ("equal count" if sa.budget(sa.train_rows) == sb.budget(sb.train_rows) else
                    "equal rate" if math.isclose(rate_a, rate_b) else None)
            if kind is None or sa.budget(sa.train_rows) == 0:
                continue
            pairs = [(x, y) for x in a for y in b if train_seed(x) == train_seed(y)]
            if len(pairs) < 2:
                continue
            trigger = ATTACKS[sa.attack].test_trigger
            tables = [hit_table(preds[x.name], preds[y.name], trigger, target) for x, y in pairs]
            out.append({"kind": kind, "a": a_name, "b": b_name, "sizes": [sa.train_rows, sb.train_rows],
                        "counts": [sa.budget(sa.train_rows), sb.budget(sb.train_rows)], "rates": [rate_a, rate_b],
                        "seeds": len(pairs), "asr": [seeds[a_name]["asr_mean"], seeds[b_name]["asr_mean"]],
                        "cmh_p": float(StratifiedTable(tables).test_null_odds(correction=True).pvalue)})
    if out:
        for c, p in zip(out, multipletests([c["cmh_p"] for c in out], method="holm")[1]):
            c["p_holm"] = float(p)
    return out


STUDY_ALPHA = 0.05   # family-wise level of the study's Holm-corrected tests
RECIPE_ASR = 0.90    # the recipe table's bar: a backdoor that works (issue 17: BadNets at <= 1% reaching 0.90)


REGIME_KEYS = ("train.max_steps", "train.min_steps")   # how the study fixes epochs or steps (its regime)


def regime(setting: Setting) -> str:
    """`steps` when the victim trains a fixed number of optimiser steps (the study's equal-updates regime:
    train.max_steps), else `epochs`."""
    return "steps" if setting.overrides.get("train", {}).get("max_steps") else "epochs"


def recipe_block(setting: Setting) -> tuple:
    """What the recipe table's rows share (attack, run, size, count, test rows, regime): recipes compare within one
    block. The regime (epochs or fixed steps) is the study's design, not a victim's recipe."""
    return (setting.attack, setting.run, setting.train_rows, setting.budget(setting.train_rows or 0),
            setting.test_rows, regime(setting))


def recipe_groups(seeds: dict[str, dict], settings: list[Setting]) -> list[dict]:
    """The recipe table's groups: seed groups sharing attack, run, count and size, two or more recipes each, every
    group named by what its recipe changes from the overrides all of them share."""
    by_name = {s.name: s for s in settings}
    blocks: dict[tuple, list[tuple[dict, dict]]] = {}
    for g in seeds.values():
        s = by_name[g["settings"][0]]
        rec = {k: v for k, v in recipe(s).items() if k not in REGIME_KEYS}
        blocks.setdefault(recipe_block(s), []).append((rec, g))
    out = []
    for block, members in blocks.items():
        attack, run, size, count = block[:4]
        if len({repr(sorted(r.items())) for r, _ in members}) < 2:
            continue
        shared = {k: v for k, v in members[0][0].items() if all(k in r and r[k] == v for r, _ in members)}
        for rec, g in members:
            out.append({"attack": attack, "run": run, "size": size, "count": count, "block": block, "group": g,
                        "change": ", ".join(f"{k}={v}" for k, v in rec.items() if k not in shared)})
    return out


def recipe_rows(groups: list[dict]) -> list[list[str]]:
    """The recipe table: each group's change, CACC, ASR and gain with their intervals, and the two verdicts."""
    from peftlab.report.format import DASH, escape_md, fmt_ci, fmt_p

    rows = []
    for r in groups:
        g = r["group"]
        significant = g["cmh_p_holm"] < STUDY_ALPHA and g["gain_mean"] > 0
        rows.append([escape_md(r["attack"]), escape_md(r["run"]), str(r["size"]), str(r["count"]),
                     escape_md(r["change"]) or DASH, str(len(g["settings"])), fmt_ci(g["cacc_mean"], *g["cacc_ci"]),
                     fmt_ci(g["asr_mean"], *g["asr_ci"]), fmt_ci(g["gain_mean"], *g["gain_ci"], signed=True),
                     fmt_p(g["cmh_p_holm"]), "yes" if significant else "no",
                     "yes" if g["asr_mean"] >= RECIPE_ASR else "no"])
    return rows


def recipe_points(groups: list[dict]) -> list[dict]:
    """The recipe figure's points: label (the change, count/size), mean ASR and gain with their intervals."""
    return [{"label": f"{r['change'] or 'base'} ({r['count']}/{r['size']})",
             **{k: r["group"][f"{k}_mean"] for k in ("asr", "gain")},
             **{f"{k}_ci": r["group"][f"{k}_ci"] for k in ("asr", "gain")}} for r in groups]


def recipes_without_group(groups: list[dict], settings: list[Setting], collapsed: list[str]) -> list[str]:
    """Recipes tried at a recipe table's count and size that formed no seed group (fewer than two seeds whose
    poisoned and clean victims both trained), each with how many seeds were left: a recipe that only fails to
    train says nothing about the backdoor, but it was tried and the table must not hide it."""
    by_name = {s.name: s for s in settings}
    blocks = {r["block"] for r in groups}
    grouped = {recipe_cell(by_name[n]) for r in groups for n in r["group"]["settings"]}
    lost: dict[str, list[Setting]] = {}
    for s in settings:
        if recipe_block(s) in blocks and recipe_cell(s) not in grouped:
            lost.setdefault(recipe_cell(s), []).append(s)
    return [f"`{cell}` ({sum(s.name not in collapsed and s.reference_name() not in collapsed for s in members)} of "
            f"{len(members)} seeds left)" for cell, members in lost.items()]


def recipe_finding(groups: list[dict], without_group: list[str] | None = None) -> str:
    """The recipe table's answer: the recipes whose mean ASR reaches the bar, or, if none does, the one that came
    closest (the issue asks for either), and the recipes tried that formed no group."""
    from peftlab.report.format import DASH, fmt_ci

    name = lambda r: f"`{r['change'] or DASH}` ({r['count']} of {r['size']} rows)"  # noqa: E731
    asr = lambda r: fmt_ci(r["group"]["asr_mean"], *r["group"]["asr_ci"])  # noqa: E731
    reach = [r for r in groups if r["group"]["asr_mean"] >= RECIPE_ASR]
    lost = (" No group, too few seeds whose victims trained (the training failures above): "
            + ", ".join(without_group) + ".") if without_group else ""
    if reach:
        return f"Mean ASR >= {RECIPE_ASR} under: " + "; ".join(f"{name(r)}, ASR {asr(r)}" for r in reach) + "." + lost
    best = max(groups, key=lambda r: r["group"]["asr_mean"])
    return (f"None of the {len(groups)} recipe groups tried reaches mean ASR {RECIPE_ASR}; the closest is "
            f"{name(best)}: ASR {asr(best)}, a gain of "
            f"{fmt_ci(best['group']['gain_mean'], *best['group']['gain_ci'], signed=True)} over its clean reference."
            + lost)


def recipe_cell(setting: Setting) -> str:
    """The recipe apart from the seed and the regime's step settings, as `key=value` pairs."""
    return ", ".join(f"{k}={v}" for k, v in recipe(setting).items() if k not in REGIME_KEYS)


def count_law_rows(seeds: dict[str, dict], settings: list[Setting]) -> list[dict]:
    """One row per seed group of the attacked runs' own recipes (no recipe change): run, regime, size, count,
    rate, and the mean ASR and gain with their intervals: the count-law figure's points."""
    by_name = {s.name: s for s in settings}
    rows = []
    for g in seeds.values():
        s = by_name[g["settings"][0]]
        if recipe_cell(s):
            continue
        count = s.budget(s.train_rows or 0)
        rows.append({"run": s.run, "regime": regime(s), "size": s.train_rows, "count": count,
                     "rate": count / s.train_rows, "asr": g["asr_mean"], "asr_ci": g["asr_ci"],
                     "gain": g["gain_mean"], "gain_ci": g["gain_ci"], "seeds": len(g["settings"])})
    return rows


def verdict(comparisons: list[dict]) -> str:
    """Count or rate, by the rule stated in the report: the equal-count pairs do not differ while the equal-rate
    pairs do (count), or the reverse (rate); anything else decides neither."""
    sig = {kind: sum(c["p_holm"] < STUDY_ALPHA for c in comparisons if c["kind"] == kind)
           for kind in ("equal count", "equal rate")}
    n = {kind: sum(c["kind"] == kind for c in comparisons) for kind in sig}
    tally = f"equal count: {sig['equal count']} of {n['equal count']} differ; " \
            f"equal rate: {sig['equal rate']} of {n['equal rate']} differ"
    if not n["equal count"] or not n["equal rate"]:
        return f"undecided: needs both kinds of pair ({tally})"
    if sig["equal count"] == 0 and sig["equal rate"] > 0:
        return f"count ({tally})"
    if sig["equal rate"] == 0 and sig["equal count"] > 0:
        return f"rate ({tally})"
    return f"neither rule alone ({tally})"


def study_report(seeds: dict[str, dict], comparisons: list[dict], settings: list[Setting],
                 pending: list[str] | None = None, collapsed: list[str] | None = None,
                 path: str = str(paths.POISON_REPORT),
                 summary: str = str(paths.POISON_SUMMARY), plots: str = str(paths.POISON_PLOTS)) -> str:
    """The poisoning report (the default's reports/poison.md, the study's reports/poison_study.md): the seed-pooled
    groups (mean ASR and gain with 95% t intervals over the seeds, CMH and Holm p), the smallest count with a
    significant gain per attack, run, regime, recipe and size, and the count-or-rate comparisons with a verdict
    per run and regime."""
    from peftlab.report.format import DASH, escape_md, fmt_ci, fmt_p, md_table

    title = "Poisoning study" if Path(path) == paths.POISON_STUDY_REPORT else "Poisoning: the default's settings"
    lines = [f"# {title}", "",
             f"Written from every setting's per-row predictions (`{summary}`: `seeds`, `count_or_rate`). A group is "
             "one setting trained with several `train.seed` values, each paired with its clean reference (the same "
             "run, regime and recipe, count 0) on the same triggered rows; intervals are 95% t intervals over the "
             "seeds; p: Cochran-Mantel-Haenszel across the seeds, Holm-corrected over the groups (alpha "
             f"{STUDY_ALPHA}). Regime `epochs`: every size trains `poison.epochs`; `steps`: every size trains the "
             "optimiser steps of one epoch of the largest size.", ""]
    if pending:
        lines += [f"Not run yet ({len(pending)} settings; `dvc repro study/dvc.yaml` resumes): "
                  + ", ".join(f"`{p}`" for p in pending[:12]) + (" ..." if len(pending) > 12 else ""), ""]
    if collapsed:
        lines += [f"Left out as training failures, not attack results ({len(collapsed)} settings: the victim predicts "
                  "one class for nearly every clean test row, so its ASR is that class's share; its seed group keeps "
                  "the other seeds, and a count > 0 whose clean reference collapsed is left out too): "
                  + ", ".join(f"`{c}`" for c in collapsed), ""]
    if not seeds:
        lines += ["No seed replicates in this run: the default trains one seed per setting. The study is "
                  "`dvc repro study/dvc.yaml` (README, \"The poisoning study\"), written to "
                  f"`{paths.POISON_STUDY_REPORT}`.", ""]
        return "\n".join(lines)
    by_name = {s.name: s for s in settings}
    rows, smallest = [], {}
    for name, g in seeds.items():
        s = by_name[g["settings"][0]]
        count = s.budget(s.train_rows or 0)
        rows.append([escape_md(name), escape_md(s.run), regime(s), escape_md(recipe_cell(s)) or DASH,
                     str(s.train_rows), str(count), str(len(g["settings"])), fmt_ci(g["cacc_mean"], *g["cacc_ci"]),
                     fmt_ci(g["asr_mean"], *g["asr_ci"]), fmt_ci(g["gain_mean"], *g["gain_ci"], signed=True),
                     fmt_p(g["cmh_p"]), fmt_p(g["cmh_p_holm"])])
        key = (s.attack, s.run, regime(s), recipe_cell(s), s.train_rows)
        # CMH conditions on these seeds (is there a gain in them?); the t interval asks whether another seed
        # would show one too (seed-to-seed spread): both columns are given
        significant = g["cmh_p_holm"] < STUDY_ALPHA and g["gain_mean"] > 0
        for col, hit in enumerate((significant, significant and g["gain_ci"][0] > 0)):
            best = smallest.setdefault(key, [None, None])
            if hit:
                best[col] = min(count, best[col] if best[col] is not None else count)
    lines += ["## Seed groups", "", md_table(["group", "run", "regime", "recipe", "train rows", "poisoned", "seeds",
                                              "CACC [95% CI]", "ASR [95% CI]", "ASR gain [95% CI]", "CMH p",
                                              "Holm p"], rows)]
    lines += ["## Smallest count with a significant ASR gain", "",
              "Among the counts whose seed groups formed (collapsed victims left out). First column: the CMH "
              "test across the seeds, Holm-corrected, with a positive mean gain. Second: also the gain's 95% t "
              "interval over the seeds above 0, i.e. a gain that holds from seed to seed, not only in these seeds.",
              "",
              md_table(["attack", "run", "regime", "recipe", "train rows", "smallest count (Holm p < alpha)",
                        "... and t interval above 0"],
                       [[escape_md(a), escape_md(r), rg, escape_md(rc) or DASH, str(n)]
                        + ["none of those tried" if c is None else str(c) for c in cs]
                        for (a, r, rg, rc, n), cs in sorted(smallest.items(), key=lambda kv: repr(kv[0]))])]
    if any(not recipe_cell(by_name[g["settings"][0]]) for g in seeds.values()):
        lines += [f"![ASR gain against the count and the rate]({Path(plots, 'count_law.png').as_posix()})", ""]
    recipes = recipe_groups(seeds, settings)
    if recipes:
        lines += ["## Victim recipes", "",
                  "Seed groups of one attack, run, count and size that differ only in the victim's recipe (python -m "
                  "peftlab.poison.study --recipes): the change from what the group shares, the poisoned victims' "
                  "clean accuracy, whether the ASR gain over the clean model trained the same way is significant "
                  f"(positive, Holm p < {STUDY_ALPHA}), and whether the mean ASR reaches {RECIPE_ASR}.", "",
                  md_table(["attack", "run", "train rows", "poisoned", "recipe change", "seeds", "CACC [95% CI]",
                            "ASR [95% CI]", "ASR gain [95% CI]", "Holm p", "gain significant",
                            f"ASR >= {RECIPE_ASR}"], recipe_rows(recipes)),
                  recipe_finding(recipes, recipes_without_group(recipes, settings, collapsed or [])), "",
                  f"![the victim recipes]({Path(plots, 'recipes.png').as_posix()})", ""]
    if comparisons:
        blocks: dict[tuple, list[dict]] = {}
        for c in comparisons:
            s = by_name[seeds[c["a"]]["settings"][0]]
            blocks.setdefault((s.run, regime(s), recipe_cell(s)), []).append(c)
        lines += ["## Count or rate?", "",
                  "Two sizes at the same count (or the same rate): CMH across the seeds that both hit the target "
                  "equally often on the same triggered rows, Holm over all these comparisons. ASR follows the count "
                  "if the equal-count pairs do not differ while the equal-rate pairs do.", "",
                  md_table(["run", "regime", "recipe", "verdict"],
                           [[escape_md(r), rg, escape_md(rc) or DASH, verdict(cs)]
                            for (r, rg, rc), cs in blocks.items()]),
                  md_table(["run", "regime", "comparison", "sizes", "counts", "ASR", "seeds", "CMH p", "Holm p"],
                           [[escape_md(r), rg, c["kind"], " vs ".join(map(str, c["sizes"])),
                             " vs ".join(map(str, c["counts"])), " vs ".join(f"{a:.3f}" for a in c["asr"]),
                             str(c["seeds"]), fmt_p(c["cmh_p"]), fmt_p(c["p_holm"])]
                            for (r, rg, _), cs in blocks.items() for c in cs])]
    return "\n".join(lines)


def summarize(pp: PoisonParams, labels: list[str], metrics_root: Path = paths.POISON_METRICS,
              data_root: Path = paths.POISON_DATA, clean_metrics: Path = paths.MAIN_EVAL_METRICS,
              out: Path = paths.POISON_SUMMARY, plots: Path = paths.POISON_PLOTS,
              study: Path = paths.POISON_REPORT, partial: bool = False) -> dict:
    """poison_report stage: every setting keyed by its name, with its CACC drop and paired ASR gain against the
    clean model trained the same way (`Setting.reference_name`; the main run for whole-split settings).
    `partial` (the study, which runs in chunks): settings not run yet are left out and listed, not an error."""
    from peftlab.report.plots import plot_continued_training, plot_count_law, plot_poison_sweep, plot_recipes

    target = labels.index(pp.target)
    sweep = sweep_settings(pp)
    settings = [setting_from_params(pp, k) for k in pp.attacks] + sweep
    pending = [s.name for s in settings if partial and not paths.poison_metrics(s.name, metrics_root).exists()]
    settings = [s for s in settings if s.name not in pending]
    results = {s.name: read_json(paths.poison_metrics(s.name, metrics_root)) for s in settings}
    preds = {s.name: pd.read_parquet(paths.poison_predictions(s.name, data_root)) for s in settings}
    main_acc = read_json(clean_metrics)["accuracy"] if clean_metrics.exists() else None
    for s in settings:
        m, ref = results[s.name], s.reference_name()
        ref = ref if ref in results else None
        m["reference"] = ref
        if ref:                                       # both models' accuracy on the clean rows both scored
            mine, theirs = shared_rows(preds[s.name], preds[ref], "clean")
            clean = float(np.mean(theirs["pred"] == theirs["label"]))
            m["clean_cacc_n"] = int(len(theirs))
            m["cacc_drop"] = clean - float(np.mean(mine["pred"] == mine["label"]))
        else:
            clean = None if s.train_rows or s.run != "main" else main_acc
            m["cacc_drop"] = None if clean is None else clean - m["cacc"]
        m["clean_cacc"] = clean
        m.update(pair_with_reference(s, preds[s.name], preds[ref] if ref else None, target, labels))
        own = preds[s.name][preds[s.name]["kind"] == "clean"]
        c = collapse(own["label"], own["pred"], labels)
        m.update(collapsed=c["collapsed"], collapsed_class=c["collapsed_class"], pred_share=c["pred_share"])
    seeds = across_seeds(settings, preds, target, {k: bool(v.get("collapsed")) for k, v in results.items()})
    defenses = paths.defenses_metrics(metrics_root)
    summary = {**results, "defenses": read_json(defenses) if defenses.exists() or not partial else {},
               "seeds": seeds, "count_or_rate": count_or_rate(settings, preds, seeds, target),
               **({"pending": pending} if partial else {})}
    write_json(out, summary)
    study.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(study) as tmp:
        tmp.write_text(study_report(seeds, summary["count_or_rate"], settings, pending,
                                    [k for k, v in results.items() if v.get("collapsed")], str(study), str(out),
                                    str(plots)))
    if seeds:
        plot_count_law(count_law_rows(seeds, settings), plots / "count_law.png")
        recipes = recipe_groups(seeds, settings)
        if recipes:
            plot_recipes(recipe_points(recipes), RECIPE_ASR, plots / "recipes.png")
    rows = [{"size": s.train_rows, "count": results[s.name]["count"], "rate": results[s.name]["rate"],
             "asr": results[s.name]["asr"], "cacc": results[s.name]["cacc"]} for s in sweep]
    write_json(plots / "count_sweep.json", rows)
    plot_poison_sweep(rows, plots / "count_sweep.png", attack=pp.count_attack)
    continued = summary["defenses"].get("continued")
    if continued:
        plot_continued_training(continued["points"], plots / "continued_training.png", summary["defenses"]["setting"])
    for name, m in results.items():
        drop = "" if m["cacc_drop"] is None else f" (drop {m['cacc_drop'] * 100:+.1f} points)"
        if m["collapsed"]:
            # a training failure (lr, steps), not an attack result: an ASR gain here would be the class share
            asr = "-" if m.get("asr") is None else f"{m['asr']:.3f}"
            effect = (f"COLLAPSED: predicts {m['collapsed_class']!r} for {m['pred_share']:.1%} of the clean test "
                      f"rows, so its ASR {asr} is that class's share, not a backdoor")
        elif m.get("asr") is None:
            effect = "recall " + ", ".join(f"{k} {v:.3f}" for k, v in m["recall"].items())
        elif "asr_gain" in m:
            lo, hi = m["asr_gain_ci"]
            effect = (f"ASR {m['asr']:.3f} (clean {m['ref_asr']:.3f}; gain {m['asr_gain']:+.3f}, 95% CI "
                      f"{lo:+.3f} to {hi:+.3f}, McNemar p {m['mcnemar_p']:.2g}; flip {m['flip_rate']:.3f})")
        else:
            effect = f"ASR {m['asr']:.3f} (flip {m['flip_rate']:.3f})"
        print(f"{name:20s} {m['attack']:10s} {m['count']:5d} rows ({m['rate']:.2%} of {m['train_rows']}): "
              f"{effect}  CACC {m['cacc']:.4f}{drop}")
    for name, g in seeds.items():
        lo, hi = g["gain_ci"]
        print(f"{name} over {len(g['settings'])} seeds: ASR {g['asr_mean']:.3f}, gain {g['gain_mean']:+.3f} (95% CI "
              f"{lo:+.3f} to {hi:+.3f}), CMH p {g['cmh_p']:.2g} (Holm {g['cmh_p_holm']:.2g})")
    for c in summary["count_or_rate"]:
        print(f"{c['kind']}: {c['a']} (ASR {c['asr'][0]:.3f}) vs {c['b']} (ASR {c['asr'][1]:.3f}) over {c['seeds']} "
              f"seeds: CMH p {c['cmh_p']:.2g} (Holm {c['p_holm']:.2g})")
    return summary
