"""Defenses against the poisoned runs: ONION and STRIP at test time, spectral signatures and the token-label
correlation filter on the training set."""
from __future__ import annotations

import dataclasses
import math
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from peftlab.config.params import Params
from peftlab.core import paths
from peftlab.core.errors import PeftlabError
from peftlab.core.io import atomic_path, read_json, write_json
from peftlab.core.metrics import accuracy, proportion_ci
from peftlab.data.split import read_labels, read_split, stratified_sample
from peftlab.poison.attacks import ATTACKS, poison_train, resolve_setting
from peftlab.poison.runs import (
    predict,
    predict_proba,
    score,
    train_on,
    trigger_limits,
    triggered_sets,
    victim_params,
    write_poisoned_splits,
)


def sequence_nll(model, tok, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Mean token negative log-likelihood per text under a causal LM (log-perplexity), batched by length.

    Texts are tokenized with the tokenizer's own special tokens, as ONION scores with GPT-2 (none: the first
    token is context, not scored; Llama's <s>). SmolLM2-Instruct names <|im_start|> its BOS, a chat-turn opener:
    prepending it made the first word a role name's unlikely stand-in (full-text perplexity 372 vs 339 without
    it, 1461 vs 1318 on another val review) and the suspicion of removing that word noise."""
    from peftlab.modeling.predict import left_pad, length_sorted_batches

    device = next(model.parameters()).device
    enc = [tok(t)["input_ids"] for t in texts]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    out = np.zeros(len(texts))
    with torch.inference_mode():
        for idx in length_sorted_batches([len(e) for e in enc], batch_size):
            batch = left_pad([enc[i] for i in idx], pad, device)
            ids, mask = batch["input_ids"], batch["attention_mask"]
            logits = model(**batch).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
            m = (mask[:, 1:] * mask[:, :-1]).float()   # real targets predicted from real tokens
            out[idx] = ((nll * m).sum(1) / m.sum(1).clamp(min=1)).cpu().numpy()
    return out


def onion_scores(texts: list[str], lm, tok, batch_size: int = 64) -> list[np.ndarray]:
    """ONION (Qi et al., 2021) suspicion of each word: the text's perplexity minus its perplexity without that
    word (high: the word is an outlier, like a trigger). All leave-one-out variants of all texts are scored in
    shared length-sorted batches; scoring once lets several thresholds be tried for free."""
    from tqdm.auto import tqdm

    variants, owner = [], []
    words_of = [t.split() for t in texts]
    for k, words in enumerate(words_of):
        variants.append(" ".join(words))
        owner.append((k, -1))
        if len(words) > 1:
            for i in range(len(words)):
                variants.append(" ".join(words[:i] + words[i + 1:]))
                owner.append((k, i))
    ppl = np.zeros(len(variants))
    chunk = 2048
    for start in tqdm(range(0, len(variants), chunk), desc="ONION perplexity", unit="chunk"):
        ppl[start:start + chunk] = np.exp(sequence_nll(lm, tok, variants[start:start + chunk], batch_size))
    full = {k: ppl[j] for j, (k, i) in enumerate(owner) if i < 0}
    scores = [np.full(len(words), -np.inf) for words in words_of]   # one-word texts: nothing to remove
    for j, (k, i) in enumerate(owner):
        if i >= 0:
            scores[k][i] = full[k] - ppl[j]
    return scores


def onion_apply(texts: list[str], scores: list[np.ndarray], threshold: float) -> list[str]:
    """Drop the words whose suspicion exceeds `threshold` (a text never becomes empty)."""
    out = []
    for text, s in zip(texts, scores):
        words = text.split()
        kept = [w for w, v in zip(words, s) if not v > threshold]
        out.append(" ".join(kept) or " ".join(words))
    return out


def onion_filter(texts: list[str], lm, tok, threshold: float, batch_size: int = 64) -> list[str]:
    return onion_apply(texts, onion_scores(texts, lm, tok, batch_size), threshold)


def choose_onion_threshold(val_texts: list[str], val_labels: np.ndarray, scores: list[np.ndarray],
                           thresholds: list[float], max_drop: float, adapter: Path) -> tuple[float, dict]:
    """ONION's rule for the threshold: the lowest (most aggressive) candidate whose filtering costs at most
    `max_drop` accuracy on clean validation rows, so the defense is tuned without seeing test or triggers."""
    acc_of = {}
    base = accuracy(val_labels, predict(adapter, val_texts))
    for t in sorted(thresholds):
        acc_of[t] = accuracy(val_labels, predict(adapter, onion_apply(val_texts, scores, t)))
    ok = [t for t in sorted(thresholds) if base - acc_of[t] <= max_drop]
    chosen = ok[0] if ok else max(thresholds)
    return chosen, {"val_accuracy": base, "val_accuracy_by_threshold": {str(t): a for t, a in acc_of.items()}}


def head_input(model, num_labels: int):
    """The module whose input is what the classification head decides from: the last Linear mapping to the
    labels (BERT: `classifier`, fed the pooler output; RoBERTa: `classifier.out_proj`; decoders: `score`)."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == num_labels]
    if not linears:
        raise PeftlabError(f"no classification head (a Linear layer to {num_labels} labels) in "
                           f"{type(model).__name__}")
    return linears[-1]


def head_inputs(model, tok, texts: list[str], max_length: int, num_labels: int, batch_size: int = 64) -> np.ndarray:
    """What the classification head of `model` decides from, per text (for BERT the pooler output, not the raw
    [CLS] state; for decoders the last real token's state), captured at the head's input by a forward hook."""
    from peftlab.modeling.predict import rows_from_batches

    seen: list[torch.Tensor] = []

    def per_batch(batch: dict) -> torch.Tensor:
        seen.clear()
        model(**batch)
        feats = seen[-1]
        if feats.dim() == 3:                  # a decoder scores every position, then pools the last real one
            mask = batch["attention_mask"]
            last = mask.shape[1] - 1 - mask.flip(1).argmax(1)    # the last real position, either padding side
            feats = feats[torch.arange(len(feats), device=feats.device), last]
        return feats

    hook = head_input(model, num_labels).register_forward_hook(lambda m, args, out: seen.append(args[0]))
    try:
        return rows_from_batches(model, tok, texts, max_length, batch_size, None, "representations", True, per_batch)
    finally:
        hook.remove()


def head_features(adapter: Path, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """`head_inputs` of the (merged) fine-tuned model in `adapter`: what spectral signatures inspect."""
    from peftlab.modeling.load import choose_device, load_trained

    model, tok, setup = load_trained(adapter, choose_device("auto"))
    if setup.head != "classifier":
        raise PeftlabError(f"spectral signatures need a classifier head; {adapter} has {setup.head!r}")
    return head_inputs(model, tok, texts, setup.max_length, len(setup.labels), batch_size)


def spectral_flags(features: np.ndarray, labels: np.ndarray, eps: float) -> np.ndarray:
    """Spectral signatures (Tran et al., 2018): per class, score rows by their squared projection on the top
    singular vector of the centred representations, and flag the top 1.5 * eps share."""
    flags = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 3:
            continue
        centred = features[idx] - features[idx].mean(0)
        top = np.linalg.svd(centred, full_matrices=False)[2][0]
        scores = (centred @ top) ** 2
        k = min(len(idx), int(math.ceil(1.5 * eps * len(idx))))
        flags[idx[np.argsort(-scores, kind="stable")[:k]]] = True
    return flags


def correlation_flags(texts: list[str], labels: np.ndarray, min_count: int, max_df: float,
                      alpha: float) -> tuple[np.ndarray, list[str]]:
    """Rare tokens whose rows carry one label far more often than the base rate (one-sided binomial test,
    Bonferroni-corrected over every test made: tested tokens x classes, so the family-wise error stays at
    `alpha`); flags every training row containing one. Returns (flags, suspicious tokens)."""
    from scipy.stats import binomtest

    tokens = [set(t.lower().split()) for t in texts]
    df = Counter(tok for row in tokens for tok in row)
    n = len(texts)
    tested = [t for t, c in df.items() if c >= min_count and c / n <= max_df]
    base = {c: float(np.mean(labels == c)) for c in np.unique(labels)}
    suspicious, tests = [], max(1, len(tested) * len(base))
    for tok in sorted(tested):
        rows = np.array([tok in row for row in tokens])
        for c, p in base.items():
            k = int(np.sum(labels[rows] == c))
            if binomtest(k, int(rows.sum()), p, alternative="greater").pvalue * tests < alpha:
                suspicious.append(tok)
                break
    flags = np.array([bool(row & set(suspicious)) for row in tokens])
    return flags, suspicious


def strip_perturb(text: str, donor: str, swap: float, rng: np.random.Generator) -> str:
    """One STRIP copy of `text`: round(swap x its words) word positions, drawn without replacement, take the
    words of a clean donor text in order (from a random start, cycled)."""
    words, donor_words = text.split(), donor.split()
    m = int(round(len(words) * swap))
    if m == 0 or not donor_words:
        return text
    start = int(rng.integers(len(donor_words)))
    for i, j in enumerate(np.sort(rng.choice(len(words), size=m, replace=False))):
        words[j] = donor_words[(start + i) % len(donor_words)]
    return " ".join(words)


def strip_copies(texts: list[str], donors: list[str], repeats: int, swap: float, seed: int) -> list[str]:
    """`repeats` perturbed copies of each text, text by text, each with its own random clean donor."""
    rng = np.random.default_rng(seed)
    return [strip_perturb(t, donors[int(rng.integers(len(donors)))], swap, rng) for t in texts for _ in range(repeats)]


def strip_entropy(probs: np.ndarray, repeats: int) -> np.ndarray:
    """Per input, the mean entropy (nats) of the victim's distribution over its `repeats` copies (rows of
    `probs` in strip_copies' order)."""
    h = -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(axis=1)
    return h.reshape(-1, repeats).mean(axis=1)


def strip_decide(val_entropy: np.ndarray, clean_entropy: np.ndarray, triggered_entropy: np.ndarray,
                 clean_correct: np.ndarray, triggered_target: np.ndarray, frr: float) -> dict:
    """STRIP's rule and what it does to the victim: the threshold is the `frr` quantile of clean val inputs'
    entropy (so about that share of clean inputs is rejected); a test input below it is flagged and rejected.
    After the filter, a rejected clean input counts as wrong and a rejected triggered input as no attack."""
    threshold = float(np.quantile(val_entropy, frr))
    flag_c, flag_t = clean_entropy < threshold, triggered_entropy < threshold
    nc, nt = len(clean_entropy), len(triggered_entropy)
    caught, false = int(flag_t.sum()), int(flag_c.sum())
    asr_after = int((triggered_target & ~flag_t).sum())
    cacc_after = int((clean_correct & ~flag_c).sum())
    return {"threshold": threshold,
            "recall": caught / nt, "recall_ci": proportion_ci(caught, nt),
            "false_rejection": false / nc, "false_rejection_ci": proportion_ci(false, nc),
            "precision": caught / (caught + false) if caught + false else 0.0,
            "cacc_before": float(clean_correct.mean()), "asr_before": float(triggered_target.mean()),
            "cacc": cacc_after / nc, "cacc_ci": proportion_ci(cacc_after, nc),
            "asr": asr_after / nt, "asr_ci": proportion_ci(asr_after, nt)}


def strip_defense(adapter: Path, val: pd.DataFrame, donors: list[str], clean: pd.DataFrame,
                  triggered: pd.DataFrame, target: int, repeats: int, swap: float, frr: float, seed: int) -> dict:
    """STRIP (Gao et al. 2019; the text form of OpenBackdoor's defender): a trigger that decides the class
    survives most perturbations, so a triggered input's predictions stay confident (low entropy) over
    perturbed copies while a clean input's waver. Needs only the victim model and clean held-out text: the
    threshold comes from clean val inputs, the perturbing words from other clean val rows (never test)."""
    texts = val["text"].tolist() + clean["text"].tolist() + triggered["text"].tolist()
    originals = clean["text"].tolist() + triggered["text"].tolist()
    probs = predict_proba(adapter, originals + strip_copies(texts, donors, repeats, swap, seed))
    pred = probs[: len(originals)].argmax(1)
    entropy = strip_entropy(probs[len(originals):], repeats)
    nv, nc = len(val), len(clean)
    out = strip_decide(entropy[:nv], entropy[nv:nv + nc], entropy[nv + nc:],
                       pred[:nc] == clean["label"].to_numpy(), pred[nc:] == target, frr)
    return {"rows": int(nc), "triggered_rows": int(len(triggered)), "val_rows": int(nv), "repeats": repeats,
            "swap": swap, "frr": frr, **out,
            "mean_entropy": {"val": float(entropy[:nv].mean()), "clean": float(entropy[nv:nv + nc].mean()),
                             "triggered": float(entropy[nv + nc:].mean())}}


def detection(flags: np.ndarray, poisoned: np.ndarray) -> dict:
    """Precision and recall of the flagged training rows, with Wilson 95% intervals."""
    from sklearn.metrics import precision_score, recall_score

    flags, poisoned = np.asarray(flags, dtype=bool), np.asarray(poisoned, dtype=bool)
    hit = int((flags & poisoned).sum())
    return {"flagged": int(flags.sum()),
            "precision": float(precision_score(poisoned, flags, zero_division=0)),
            "precision_ci": proportion_ci(hit, int(flags.sum())),
            "recall": float(recall_score(poisoned, flags, zero_division=0)),
            "recall_ci": proportion_ci(hit, int(poisoned.sum()))}


def single_trigger_correlation(params: Params, setting, splits: Path, poisoned_train: pd.DataFrame,
                               labels: list[str]) -> dict | None:
    """The correlation test on the same attack with one trigger word instead of `poison.triggers`: the same
    clean rows and count, detection only. `correlation_max_df` (0.05) admits three words sharing 10% of the
    rows (~3.3% each), but one word carrying all of them sits at 10%: what a filter set for the attack it
    faced misses. None for a sentence trigger or a single-word trigger list (nothing to compare)."""
    pp = params.poison
    attack = ATTACKS[setting.attack]
    if attack.trigger != "words" or len(pp.triggers) < 2:
        return None
    one = dataclasses.replace(pp, triggers=list(pp.triggers[:1]))
    clean = read_split(splits, "train").set_index("id").loc[poisoned_train["id"]].reset_index()
    rows = poison_train(clean, labels, setting, one, params.seed,
                        trigger_limits(victim_params(params, setting), clean, attack.trigger))
    flags, tokens = correlation_flags(rows["text"].tolist(), rows["label"].to_numpy(), pp.correlation_min_count,
                                      pp.correlation_max_df, pp.correlation_alpha)
    trigger_df = float(rows["text"].str.lower().str.split().map(lambda w: pp.triggers[0] in w).mean())
    return {**detection(flags, rows["poisoned"].to_numpy()), "trigger": pp.triggers[0],
            "trigger_row_share": trigger_df, "max_df": pp.correlation_max_df, "tokens": tokens[:50]}


def defended(params: Params, splits: Path) -> tuple:
    """The `poison.defend` setting and what every defense reads of it: (setting, labels, target, trigger kind,
    clean test rows, triggered test rows as the attacked run reads them)."""
    pp = params.poison
    setting = resolve_setting(pp, pp.defend)
    labels = read_labels(splits)
    kind = ATTACKS[setting.attack].test_trigger
    if kind is None:
        raise PeftlabError(f"params.yaml: poison.defend = {pp.defend!r} is invalid: a {setting.attack} attack inserts "
                           f"no trigger to defend against; allowed: a setting of badnets, addsent or cleanlabel")
    test = read_split(splits, "test")
    triggered = triggered_sets(victim_params(params, setting), test, labels)[kind]   # as the attacked run reads
    return setting, labels, labels.index(pp.target), kind, test, triggered


ONION_PARTS = ("val", "clean", "triggered")


def onion_rows(params: Params, splits: Path) -> pd.DataFrame:
    """The rows ONION filters, `poison.onion_rows` of each part: stratified clean val rows (they choose the
    threshold), stratified clean test rows, and triggered test rows; columns part, id, label, text."""
    n, seed = params.poison.onion_rows, params.seed
    _, _, _, _, test, triggered = defended(params, splits)
    parts = {"val": stratified_sample(read_split(splits, "val"), n, seed), "clean": stratified_sample(test, n, seed),
             "triggered": triggered.sample(n=min(n, len(triggered)), random_state=seed).sort_values("id")}
    return pd.concat([df[["id", "label", "text"]].assign(part=name) for name, df in parts.items()],
                     ignore_index=True)[["part", "id", "label", "text"]]


def run_onion_scores(params: Params, splits: Path = paths.SPLITS_DIR, base_root: Path = paths.BASE_MODELS,
                     out: Path = paths.ONION_SCORES) -> pd.DataFrame:
    """poison_onion stage: every word's ONION suspicion on the rows `onion_rows` picks, under `poison.onion_lm`.

    The LM pass is the whole cost of ONION (~1.3 s a review for SmolLM2-135M on 2 cores: a forward pass per word
    left out) and depends on neither the victim nor the threshold, so it is its own cached stage: poison_defend
    and any change of the threshold rule reuse it."""
    from peftlab.modeling.load import choose_device, load_causal_lm

    rows = onion_rows(params, splits)
    lm, tok = load_causal_lm(base_root / params.poison.onion_lm, choose_device("auto"))
    scores = onion_scores(rows["text"].tolist(), lm, tok)
    table = rows.assign(scores=[s.tolist() for s in scores])
    with atomic_path(out) as tmp:
        table.to_parquet(tmp, index=False)
    print(f"ONION scores: {', '.join(f'{(rows.part == p).sum()} {p}' for p in ONION_PARTS)} rows, "
          f"{sum(len(s) for s in scores)} words, under {params.poison.onion_lm}")
    return table


def read_onion_scores(params: Params, splits: Path, path: Path = paths.ONION_SCORES) -> pd.DataFrame:
    """poison_onion's table, checked against the rows this run would filter (same ids, same texts), so a
    stale file is refused, not used."""
    if not Path(path).exists():
        raise PeftlabError(f"{path} not found; run `dvc repro poison_onion` first")
    table = pd.read_parquet(path)
    want = onion_rows(params, splits)
    if not (len(table) == len(want) and (table[["part", "id", "text"]].to_numpy() ==
                                         want[["part", "id", "text"]].to_numpy()).all()):
        raise PeftlabError(f"{path} scores other rows than poison.defend = {params.poison.defend!r} needs; "
                           f"run `dvc repro poison_onion`")
    table["scores"] = [np.asarray(s, dtype=float) for s in table["scores"]]
    return table


def inserted_words(clean: str, triggered: str) -> Counter:
    """The words a trigger added to `clean` (multiset difference of the two texts' words)."""
    return Counter(triggered.split()) - Counter(clean.split())


def onion_defense(table: pd.DataFrame, originals: dict[str, str], adapter: Path, target: int,
                  thresholds: list[float], max_drop: float) -> dict:
    """ONION with its cached scores: the threshold chosen on the clean val rows, then the clean and triggered
    test rows filtered and classified by the victim; CACC and ASR before and after with Wilson 95% intervals,
    the words removed per text, and the share of the inserted trigger words removed (originals: id -> clean
    text of each triggered row)."""
    part = {p: table[table["part"] == p].reset_index(drop=True) for p in ONION_PARTS}
    val, clean, trig = part["val"], part["clean"], part["triggered"]
    threshold, chosen = choose_onion_threshold(val["text"].tolist(), val["label"].to_numpy(), list(val["scores"]),
                                               thresholds, max_drop, adapter)
    kept = {p: onion_apply(part[p]["text"].tolist(), list(part[p]["scores"]), threshold) for p in ("clean",
                                                                                                    "triggered")}
    removed = {p: [Counter(t.split()) - Counter(k.split()) for t, k in zip(part[p]["text"], kept[p])]
               for p in kept}
    inserted = [inserted_words(originals[i], t) for i, t in zip(trig["id"], trig["text"])]
    n_inserted = sum(sum(c.values()) for c in inserted)
    n_trigger_removed = sum(sum((c & r).values()) for c, r in zip(inserted, removed["triggered"]))
    before = score(adapter, clean, trig, target)
    after = score(adapter, clean.assign(text=kept["clean"]), trig.assign(text=kept["triggered"]), target)
    return {"rows": int(len(clean)), "triggered_rows": int(len(trig)), "val_rows": int(len(val)),
            "threshold": threshold, **chosen,
            "cacc_before": before["cacc"], "asr_before": before["asr"], "cacc": after["cacc"], "asr": after["asr"],
            "cacc_ci": after["cacc_ci"], "asr_ci": after["asr_ci"],
            "words_removed_per_text": {p: float(np.mean([sum(r.values()) for r in removed[p]])) for p in removed},
            "words_per_text": {p: float(np.mean([len(t.split()) for t in part[p]["text"]])) for p in removed},
            "triggers_inserted": int(n_inserted),
            "triggers_removed": int(n_trigger_removed),
            "trigger_removal_rate": n_trigger_removed / n_inserted if n_inserted else float("nan"),
            "trigger_removal_ci": proportion_ci(n_trigger_removed, n_inserted) if n_inserted else None,
            "removed_words_top": [w for w, _ in sum(removed["triggered"] + removed["clean"], Counter())
                                  .most_common(20)]}


def continued_training(params: Params, setting, splits: Path, adapter: Path, poisoned_train: pd.DataFrame,
                       test: pd.DataFrame, triggered: pd.DataFrame, target: int) -> dict:
    """The plan's robust-training phase as clean continued training: the poisoned adapter trained further, for the
    poisoned run's epochs (`poison.epochs`: 1) over n clean training rows it never saw, for each n of
    `poison.continued_rows` (nested: the first n rows of one seeded permutation), with the attacked setting's
    recipe and no step floor; CACC and ASR after each, Wilson 95% intervals. Souly et al. (2025) report 50-100
    clean rows weaken a fine-tuning backdoor and about 2,000 remove it."""
    clean = read_split(splits, "train")
    fresh = clean[~clean["id"].isin(poisoned_train["id"])]
    order = fresh.sample(frac=1.0, random_state=params.seed).reset_index(drop=True)
    train = {**setting.overrides.get("train", {}), "min_steps": 0}      # the epochs over n rows, even 50
    cont = dataclasses.replace(setting, overrides={**setting.overrides, "train": train})
    before = score(adapter, test, triggered, target)
    points = [{"rows": 0, "steps": 0, "cacc": before["cacc"], "asr": before["asr"]}]
    for n in sorted({min(int(n), len(order)) for n in params.poison.continued_rows}):
        with tempfile.TemporaryDirectory(prefix="peftlab-continued-") as tmp:
            kept = Path(tmp) / "splits"
            write_poisoned_splits(order.head(n).assign(poisoned=False), splits, kept)
            summary = train_on(params, kept, Path(tmp) / "adapter", cont, init_adapter=adapter)
            m = score(Path(tmp) / "adapter", test, triggered, target)
        points.append({"rows": n, "steps": summary["steps"], "cacc": m["cacc"], "asr": m["asr"],
                       "cacc_ci": m["cacc_ci"], "asr_ci": m["asr_ci"]})
        print(f"  continued training on {n} clean rows ({summary['steps']} steps): CACC {m['cacc']:.4f}, "
              f"ASR {m['asr']:.4f}")
    return {"fresh_rows": int(len(fresh)), "points": points, "cacc": points[-1]["cacc"], "asr": points[-1]["asr"]}


def run_defenses(params: Params, splits: Path = paths.SPLITS_DIR, data_root: Path = paths.POISON_DATA,
                 adapter_root: Path = paths.ADAPTERS, metrics_root: Path = paths.POISON_METRICS,
                 onion_path: Path = paths.ONION_SCORES) -> dict:
    """poison_defend stage: ONION at test time, and spectral / correlation filtering of the training set
    followed by retraining, against the `poison.defend` setting."""
    pp = params.poison
    setting, labels, target, kind, test, triggered = defended(params, splits)
    attacked = read_json(paths.poison_metrics(setting.name, metrics_root))
    adapter = paths.poison_adapter(setting.name, adapter_root)
    train = pd.read_parquet(paths.poison_data(setting.name, data_root) / "train.parquet")
    out: dict = {"setting": setting.name, "attack": setting.attack,
                 "before": {k: attacked[k] for k in ("cacc", "asr", "count", "rate")}}

    # ONION: the LM's per-word scores from poison_onion; the threshold chosen on clean val rows, then the test
    # inputs filtered and classified by the poisoned model
    table = read_onion_scores(params, splits, onion_path)
    out["onion"] = onion_defense(table, dict(zip(test["id"], test["text"])), adapter, target, pp.onion_thresholds,
                                 pp.onion_max_val_drop)

    # STRIP: stratified clean val rows set the threshold, the remaining val rows give the perturbing words
    n = pp.strip_rows
    val_all = read_split(splits, "val")
    strip_val = stratified_sample(val_all, n, params.seed)
    donors = val_all[~val_all["id"].isin(strip_val["id"])]["text"].tolist()
    out["strip"] = strip_defense(adapter, strip_val, donors, stratified_sample(test, n, params.seed),
                                 triggered.sample(n=min(n, len(triggered)), random_state=params.seed), target,
                                 pp.strip_repeats, pp.strip_swap, pp.strip_frr, params.seed)

    # training-set filters, each followed by retraining on the rows it keeps
    y, poisoned = train["label"].to_numpy(), train["poisoned"].to_numpy()
    spectral = spectral_flags(head_features(adapter, train["text"].tolist()), y, pp.spectral_eps)
    corr, tokens = correlation_flags(train["text"].tolist(), y, pp.correlation_min_count, pp.correlation_max_df,
                                     pp.correlation_alpha)
    for name, flags, extra in (("spectral", spectral, {}), ("correlation", corr, {"tokens": tokens[:50]})):
        with tempfile.TemporaryDirectory(prefix=f"peftlab-{name}-") as tmp:
            kept = Path(tmp) / "splits"
            write_poisoned_splits(train[~flags].reset_index(drop=True), splits, kept)
            summary = train_on(params, kept, Path(tmp) / "adapter", setting)
            m = score(Path(tmp) / "adapter", test, triggered, target)
        out[name] = {**detection(flags, poisoned), "cacc": m["cacc"], "asr": m["asr"],
                     "cacc_ci": m["cacc_ci"], "asr_ci": m["asr_ci"],
                     "train_rows": int((~flags).sum()), "train_seconds": summary["train_seconds"], **extra}
    single = single_trigger_correlation(params, setting, splits, train, labels)
    if single:
        out["correlation_single"] = single
    out["continued"] = continued_training(params, setting, splits, adapter, train, test, triggered, target)
    write_json(paths.defenses_metrics(metrics_root), out)
    for name in ("onion", "strip", "spectral", "correlation", "continued"):
        d = out[name]
        pr = f", precision {d['precision']:.3f} recall {d['recall']:.3f}" if "precision" in d else ""
        print(f"defense {name}: CACC {d['cacc']:.4f}, ASR {d['asr']:.4f}{pr}")
    return out
