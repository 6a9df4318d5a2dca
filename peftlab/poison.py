"""Data poisoning: backdoor and label-flip attacks on the training split, and three defenses.

The clean splits are only read. A poisoned training set is written next to them (data/poison/<setting>/, a
`poisoned` column marking its rows) and trained with the clean run's model, LoRA and train params, so the
only difference from the clean run is the poison. Metrics: clean accuracy (CACC) on the clean test split,
attack success rate (ASR) on the test rows whose true label is not the target, with the trigger inserted.

No library implements these text attacks and defenses for the Trainer/peft stack (OpenBackdoor pins old
transformers and trains its own models), so they are written here, each after its paper.
"""
from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from peftlab.data import read_labels, read_split
from peftlab.errors import PeftlabError
from peftlab.io import atomic_path, read_json, stable_hash, write_json
from peftlab.metrics import accuracy
from peftlab.params import Params, PoisonParams


@dataclass
class Setting:
    """One poisoning experiment: which attack, how many rows, on how large a training set."""
    name: str
    attack: str
    count: int | None = None
    rate: float | None = None
    train_rows: int | None = None

    def budget(self, n_rows: int) -> int:
        return int(self.count) if self.count is not None else int(round(float(self.rate) * n_rows))


def setting_from_params(pp: PoisonParams, name: str) -> Setting:
    return Setting(name=name, **pp.setting(name))


def count_setting(pp: PoisonParams, count: int, size: int) -> Setting:
    """An item of the count sweep (dvc.yaml matrix over poison.counts x poison.sizes)."""
    return Setting(name=f"count{count}-n{size}", attack=pp.count_attack, count=count, train_rows=size)


def sweep_settings(pp: PoisonParams) -> list[Setting]:
    """Every item of the count sweep, by size then count (the order of the plot's lines and points)."""
    return [count_setting(pp, c, n) for n in pp.sizes for c in pp.counts]


def resolve_setting(pp: PoisonParams, name: str) -> Setting:
    """A key of poison.attacks, or a count-sweep item named count<C>-n<SIZE>."""
    if name in pp.attacks:
        return setting_from_params(pp, name)
    sweep = {s.name: s for s in sweep_settings(pp)}
    if name in sweep:
        return sweep[name]
    raise PeftlabError(f"params.yaml: poison.defend = {name!r} is invalid; allowed: "
                       f"{', '.join([*pp.attacks, *sweep])}")


# --- attacks ---------------------------------------------------------------------------------------------

def row_rng(seed: int, row_id: str, salt: str) -> np.random.Generator:
    """A generator per row, so a row's trigger depends on the seed and the row only, not on row order."""
    return np.random.default_rng([seed, int(stable_hash(salt, row_id), 16)])


def insert_trigger(text: str, attack: str, pp: PoisonParams, rng: np.random.Generator) -> str:
    """BadNets / clean-label: `n_triggers` rare words at random word positions; AddSent: the sentence."""
    words = text.split()
    if attack == "addsent":
        pos = int(rng.integers(0, len(words) + 1))
        return " ".join(words[:pos] + [pp.sentence] + words[pos:])
    for _ in range(pp.n_triggers):
        pos = int(rng.integers(0, len(words) + 1))
        words.insert(pos, str(rng.choice(pp.triggers)))
    return " ".join(words)


def poison_train(train: pd.DataFrame, labels: list[str], setting: Setting, pp: PoisonParams,
                 seed: int) -> pd.DataFrame:
    """The training rows with `setting.budget` of them poisoned (`poisoned` marks them).

    badnets, addsent: trigger inserted into non-target rows, label set to the target (dirty label).
    labelflip: non-target rows relabelled as the target, no trigger. cleanlabel: trigger inserted into rows
    that already carry the target label, labels untouched.
    """
    if pp.target not in labels:
        raise PeftlabError(f"params.yaml: poison.target = {pp.target!r} is invalid; allowed: {', '.join(labels)}")
    t = labels.index(pp.target)
    df = train.copy().reset_index(drop=True)
    df["poisoned"] = False
    pool = df[df["label"] == t] if setting.attack == "cleanlabel" else df[df["label"] != t]
    n = setting.budget(len(df))
    if n > len(pool):
        raise PeftlabError(f"poison setting {setting.name!r}: {n} poisoned rows asked for, but only {len(pool)} "
                           f"training rows are eligible; allowed: a count <= {len(pool)}")
    chosen = pool.sort_values("id").sample(n=n, random_state=seed).index if n else []
    for i in chosen:
        if setting.attack != "labelflip":
            df.at[i, "text"] = insert_trigger(df.at[i, "text"], setting.attack, pp, row_rng(seed, df.at[i, "id"], "train"))
        if setting.attack != "cleanlabel":
            df.at[i, "label"], df.at[i, "label_text"] = t, pp.target
        df.at[i, "poisoned"] = True
    return df


def triggered_test(test: pd.DataFrame, labels: list[str], attack: str, pp: PoisonParams, seed: int) -> pd.DataFrame:
    """The test rows whose true label is not the target, with the attack's trigger inserted (ASR's rows)."""
    t = labels.index(pp.target)
    rows = test[test["label"] != t].copy()
    trigger = "badnets" if attack in ("badnets", "cleanlabel", "labelflip") else attack
    rows["text"] = [insert_trigger(x, trigger, pp, row_rng(seed, i, "test")) for x, i in zip(rows["text"], rows["id"])]
    return rows.reset_index(drop=True)


def attack_success_rate(pred_on_triggered: np.ndarray, target: int) -> float:
    """Share of triggered non-target rows predicted as the target."""
    return float(np.mean(np.asarray(pred_on_triggered) == target)) if len(pred_on_triggered) else float("nan")


# --- training and scoring through the project's own paths ------------------------------------------------

def write_poisoned_splits(poisoned_train: pd.DataFrame, clean_splits: Path, out_dir: Path) -> None:
    """data/poison/<setting>/: the poisoned train split beside copies of the clean val split and manifest."""
    with atomic_path(out_dir, is_dir=True) as tmp:
        poisoned_train.to_parquet(tmp / "train.parquet", index=False)
        shutil.copy2(clean_splits / "val.parquet", tmp / "val.parquet")
        shutil.copy2(clean_splits / "manifest.json", tmp / "manifest.json")


def train_on(params: Params, splits: Path, adapter: Path) -> dict:
    """LoRA training with the clean run's params on `splits` (batch size, epochs and validation rows from the
    poison section: a few thousand rows need more, smaller steps than the whole split); checkpoints stay in a
    temp folder."""
    from peftlab.train import RunPaths, run_train

    pp = params.poison
    tp = dataclasses.replace(params.train, report_to=["none"], max_train_samples=None, batch_size=pp.batch_size,
                             max_eval_samples=pp.eval_rows, epochs=pp.epochs or params.train.epochs)
    with tempfile.TemporaryDirectory(prefix="peftlab-poison-") as tmp:
        tmp = Path(tmp)
        paths = RunPaths(splits, adapter, tmp / "checkpoints", tmp / "live", tmp / "train.json")
        return run_train(dataclasses.replace(params, train=tp), paths)


def predict(adapter: Path, texts: list[str], batch_size: int = 64) -> np.ndarray:
    from peftlab.models import choose_device, load_trained
    from peftlab.predict import predict_probs

    device = choose_device("auto")
    model, tok, setup = load_trained(adapter, device)
    return predict_probs(model, tok, setup, texts, batch_size, device, progress=False).argmax(1)


def score(adapter: Path, test: pd.DataFrame, triggered: pd.DataFrame, target: int) -> dict:
    pred = predict(adapter, test["text"].tolist() + triggered["text"].tolist())
    clean, trig = pred[: len(test)], pred[len(test):]
    return {"cacc": accuracy(test["label"], clean), "asr": attack_success_rate(trig, target),
            "asr_n": int(len(triggered)), "n": int(len(test))}


def run_poison(params: Params, setting: Setting, splits: Path = Path("data/splits"),
               data_root: Path = Path("data/poison"), adapter_root: Path = Path("models/adapters"),
               metrics_root: Path = Path("metrics/poison")) -> dict:
    """poison stage: poison the training split per `setting`, train, report CACC and ASR."""
    pp, seed = params.poison, params.seed
    labels = read_labels(splits)
    train, test = read_split(splits, "train"), read_split(splits, "test")
    if setting.train_rows and setting.train_rows < len(train):
        train = train.sort_values("id").sample(n=setting.train_rows, random_state=seed)
    poisoned = poison_train(train, labels, setting, pp, seed)
    out_dir = data_root / setting.name
    write_poisoned_splits(poisoned, splits, out_dir)
    adapter = adapter_root / f"poison-{setting.name}"
    summary = train_on(params, out_dir, adapter)
    target = labels.index(pp.target)
    m = score(adapter, test, triggered_test(test, labels, setting.attack, pp, seed), target)
    n_poison = int(poisoned["poisoned"].sum())
    result = {"attack": setting.attack, "count": n_poison, "rate": n_poison / len(poisoned),
              "train_rows": int(len(poisoned)), **m, "train_seconds": summary["train_seconds"]}
    write_json(metrics_root / f"{setting.name}.json", result)
    print(f"poison {setting.name}: {n_poison} of {len(poisoned)} rows ({setting.attack}): "
          f"CACC {m['cacc']:.4f}, ASR {m['asr']:.4f} on {m['asr_n']} triggered test rows")
    return result


# --- defenses --------------------------------------------------------------------------------------------

def sequence_nll(model, tok, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """Mean token negative log-likelihood per text under a causal LM (log-perplexity), batched by length."""
    from peftlab.predict import left_pad, length_sorted_batches

    device = next(model.parameters()).device
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    enc = [bos + tok(t, add_special_tokens=False)["input_ids"] for t in texts]
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


def head_features(adapter: Path, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """The representation the classification head reads ([CLS] for encoders, the last real token for
    decoders), from the (merged) fine-tuned model: what spectral signatures inspect."""
    from peftlab.models import choose_device, load_trained
    from peftlab.predict import padded_batches
    from peftlab.truncation import encode_truncated

    device = choose_device("auto")
    model, tok, setup = load_trained(adapter, device)
    if setup.head != "classifier":
        raise PeftlabError(f"spectral signatures need a classifier head; {adapter} has {setup.head!r}")
    enc = encode_truncated(tok, texts, setup.max_length)
    out = None
    with torch.inference_mode():
        for idx, batch in padded_batches(tok, enc, batch_size, device, "representations"):
            hidden = model(**batch, output_hidden_states=True).hidden_states[-1]
            if setup.family == "decoder":
                last = batch["attention_mask"].sum(1) - 1
                feats = hidden[torch.arange(len(idx), device=device), last]
            else:
                feats = hidden[:, 0]
            if out is None:
                out = np.zeros((len(texts), feats.shape[-1]), dtype=np.float32)
            out[idx] = feats.float().cpu().numpy()
    return out


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
    Bonferroni-corrected); flags every training row containing one. Returns (flags, suspicious tokens)."""
    from scipy.stats import binomtest

    tokens = [set(t.lower().split()) for t in texts]
    df = Counter(tok for row in tokens for tok in row)
    n = len(texts)
    tested = [t for t, c in df.items() if c >= min_count and c / n <= max_df]
    base = {c: float(np.mean(labels == c)) for c in np.unique(labels)}
    suspicious = []
    for tok in sorted(tested):
        rows = np.array([tok in row for row in tokens])
        for c, p in base.items():
            k = int(np.sum(labels[rows] == c))
            if binomtest(k, int(rows.sum()), p, alternative="greater").pvalue * max(1, len(tested)) < alpha:
                suspicious.append(tok)
                break
    flags = np.array([bool(row & set(suspicious)) for row in tokens])
    return flags, suspicious


def detection(flags: np.ndarray, poisoned: np.ndarray) -> dict:
    from sklearn.metrics import precision_score, recall_score

    return {"flagged": int(flags.sum()),
            "precision": float(precision_score(poisoned, flags, zero_division=0)),
            "recall": float(recall_score(poisoned, flags, zero_division=0))}


def run_defenses(params: Params, splits: Path = Path("data/splits"), data_root: Path = Path("data/poison"),
                 adapter_root: Path = Path("models/adapters"), base_root: Path = Path("models/base"),
                 metrics_root: Path = Path("metrics/poison")) -> dict:
    """poison_defend stage: ONION at test time, and spectral / correlation filtering of the training set
    followed by retraining, against the `poison.defend` setting."""
    from peftlab.models import choose_device, load_causal_lm

    pp, seed = params.poison, params.seed
    setting = resolve_setting(pp, pp.defend)
    labels = read_labels(splits)
    target = labels.index(pp.target)
    test = read_split(splits, "test")
    triggered = triggered_test(test, labels, setting.attack, pp, seed)
    attacked = read_json(metrics_root / f"{setting.name}.json")
    adapter = adapter_root / f"poison-{setting.name}"
    train = pd.read_parquet(data_root / setting.name / "train.parquet")
    out: dict = {"setting": setting.name, "attack": setting.attack,
                 "before": {k: attacked[k] for k in ("cacc", "asr", "count", "rate")}}

    # ONION: threshold chosen on clean val rows, then test inputs filtered with the LM and classified by the
    # poisoned model
    val = read_split(splits, "val").sort_values("id").head(pp.onion_rows)
    clean_sub = test.sort_values("id").head(pp.onion_rows)
    trig_sub = triggered.sort_values("id").head(pp.onion_rows)
    texts = val["text"].tolist() + clean_sub["text"].tolist() + trig_sub["text"].tolist()
    lm, lm_tok = load_causal_lm(base_root / pp.onion_lm, choose_device("auto"))
    scores = onion_scores(texts, lm, lm_tok)
    del lm
    nv, nc = len(val), len(clean_sub)
    threshold, chosen = choose_onion_threshold(texts[:nv], val["label"].to_numpy(), scores[:nv],
                                               pp.onion_thresholds, pp.onion_max_val_drop, adapter)
    filtered = onion_apply(texts[nv:], scores[nv:], threshold)
    before = score(adapter, clean_sub, trig_sub, target)
    after = score(adapter, clean_sub.assign(text=filtered[:nc]), trig_sub.assign(text=filtered[nc:]), target)
    out["onion"] = {"rows": int(len(clean_sub)), "threshold": threshold, **chosen,
                    "cacc_before": before["cacc"], "asr_before": before["asr"],
                    "cacc": after["cacc"], "asr": after["asr"]}

    # training-set filters, each followed by retraining on the rows it keeps
    y, poisoned = train["label"].to_numpy(), train["poisoned"].to_numpy()
    spectral = spectral_flags(head_features(adapter, train["text"].tolist()), y, pp.spectral_eps)
    corr, tokens = correlation_flags(train["text"].tolist(), y, pp.correlation_min_count, pp.correlation_max_df,
                                     pp.correlation_alpha)
    for name, flags, extra in (("spectral", spectral, {}), ("correlation", corr, {"tokens": tokens[:50]})):
        with tempfile.TemporaryDirectory(prefix=f"peftlab-{name}-") as tmp:
            kept = Path(tmp) / "splits"
            write_poisoned_splits(train[~flags].reset_index(drop=True), splits, kept)
            summary = train_on(params, kept, Path(tmp) / "adapter")
            m = score(Path(tmp) / "adapter", test, triggered, target)
        out[name] = {**detection(flags, poisoned), "cacc": m["cacc"], "asr": m["asr"],
                     "train_rows": int((~flags).sum()), "train_seconds": summary["train_seconds"], **extra}
    write_json(metrics_root / "defenses.json", out)
    for name in ("onion", "spectral", "correlation"):
        d = out[name]
        pr = f", precision {d['precision']:.3f} recall {d['recall']:.3f}" if "precision" in d else ""
        print(f"defense {name}: CACC {d['cacc']:.4f}, ASR {d['asr']:.4f}{pr}")
    return out


# --- summary ---------------------------------------------------------------------------------------------

def summarize(pp: PoisonParams, metrics_root: Path = Path("metrics/poison"),
              clean_metrics: Path = Path("metrics/evaluate.json"), out: Path = Path("metrics/poison.json"),
              plots: Path = Path("plots/poison")) -> dict:
    """poison_report stage: every setting keyed by its name (attack and budget), with its CACC drop against
    the clean model trained on the same rows (count 0 at that size, or the main run for the whole split)."""
    from peftlab.report import plot_poison_sweep

    sweep = sweep_settings(pp)
    settings = [setting_from_params(pp, k) for k in pp.attacks] + sweep
    results = {s.name: read_json(metrics_root / f"{s.name}.json") for s in settings}
    main_acc = read_json(clean_metrics)["accuracy"] if clean_metrics.exists() else None
    for s in settings:
        m = results[s.name]
        clean = results.get(f"count0-n{s.train_rows}", {}).get("cacc") if s.train_rows else main_acc
        m["clean_cacc"] = clean
        m["cacc_drop"] = None if clean is None else clean - m["cacc"]
    summary = {**results, "defenses": read_json(metrics_root / "defenses.json")}
    write_json(out, summary)
    rows = [{"size": s.train_rows, "count": results[s.name]["count"], "rate": results[s.name]["rate"],
             "asr": results[s.name]["asr"], "cacc": results[s.name]["cacc"]} for s in sweep]
    write_json(plots / "count_sweep.json", rows)
    plot_poison_sweep(rows, plots / "count_sweep.png", attack=pp.count_attack)
    for name, m in results.items():
        drop = "" if m["cacc_drop"] is None else f" (drop {m['cacc_drop'] * 100:+.1f} points)"
        print(f"{name:20s} {m['attack']:10s} {m['count']:5d} rows ({m['rate']:.2%} of {m['train_rows']}): "
              f"ASR {m['asr']:.3f}  CACC {m['cacc']:.4f}{drop}")
    return summary
