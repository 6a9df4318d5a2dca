"""Typed params, validated once at stage start.

Hand-written rather than pydantic because the contract is one line per error that names the key, the bad
value and what is allowed (pydantic's reports are multi-line and name internal types). Values written by
`dvc exp run -S` come back through YAML, so `-S train.lr=1e-3` may arrive as the string "1e-3": numeric
fields accept numeric strings, so a value parses the same whether it came from the file or from -S.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from peftlab.config.test_sets import check_test_sets
from peftlab.core.errors import PeftlabError, bad_param

PARAMS_FILE = "params.yaml"


def _meta(default: Any = None, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
          hi_open: bool = False, doc: str = "", factory: Any = None) -> Any:
    md = {"lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open, "doc": doc}
    if factory is not None:
        return field(default_factory=factory, metadata=md)
    return field(default=default, metadata=md)


@dataclass
class DataParams:
    name: str = _meta("rotten_tomatoes", doc="catalog key, or a new name when `source` is given")
    source: Optional[str] = _meta(doc="hf:<repo>[@rev] | local:<path> | pypi:<name>==<ver>#<inner>")
    sha256: Optional[str] = None
    config: Optional[str] = None
    split: Optional[str] = None
    streaming: Optional[bool] = _meta(doc="true: fetch into parquet shards (DuckDB scan of local parquet/jsonl, "
                                      "else record batches)")
    configs: Optional[list[str]] = _meta(doc="several Hub configs fetched in turn, each a category")
    config_prefix: Optional[str] = _meta(doc="stripped from a config name to give its category")
    per_category: Optional[int] = _meta(lo=1, doc="streaming: keep at most this many rows per category")
    sample: Optional[Literal["first", "reservoir"]] = _meta(doc="streaming cap: first N, or a seeded uniform sample")
    text_template: Optional[str] = _meta(doc="text built from several columns, e.g. '{title}\\n\\n{content}'")
    format: Optional[str] = None
    encoding: Optional[str] = None
    text_column: Optional[str] = None
    label_column: Optional[str] = None
    group_column: Optional[str] = None
    category_column: Optional[str] = None
    rating_column: Optional[str] = None
    label_map: Optional[dict] = None
    drop_values: Optional[dict] = None
    labels: Optional[list[str]] = _meta(doc="label order used everywhere; null: the catalog's")
    max_samples: Optional[int] = _meta(lo=1, doc="seeded random sample of this many rows")


@dataclass
class ModelParams:
    name: str = _meta("minilm-l6", doc="a key of `models` (fetched into models/base/<name>)")
    head: Optional[Literal["classifier", "generative", "seq2seq"]] = _meta(doc="null: the catalog's")
    quantization: Literal["none", "8bit", "4bit"] = "none"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    max_length: int = _meta(128, lo=8, hi=32768, doc="tokens of the review itself, prompt and special tokens on top")
    trust_remote_code: bool = False


@dataclass
class SplitParams:
    val: float = _meta(0.1, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    test: float = _meta(0.1, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    grouped: bool = _meta(False, doc="keep each group (data.group_column) inside one split")
    min_words: int = _meta(1, lo=1)
    max_words: int = _meta(512, lo=1)
    memory_limit_mb: int = _meta(512, lo=64, doc="DuckDB's memory limit for split and the local-file fetch; "
                                 "more spills less to disk, but peak RSS is this plus ~300 MB")
    threads: Optional[int] = _meta(None, lo=1, doc="DuckDB threads (null: every core); fewer leave cores to "
                                   "other work at the cost of speed, the result is the same")

    def check(self) -> None:
        if self.val + self.test >= 1.0:
            raise PeftlabError(f"params.yaml: split.val + split.test = {self.val + self.test:g} leaves no training "
                               f"data; allowed: a sum below 1 (e.g. val: 0.1, test: 0.1)")
        if self.min_words > self.max_words:
            raise PeftlabError(f"params.yaml: split.min_words = {self.min_words} is above split.max_words = "
                               f"{self.max_words}; allowed: min_words <= max_words")


@dataclass
class LoraParams:
    r: int = _meta(8, lo=1, hi=4096)
    alpha: float = _meta(16.0, lo=0.0, lo_open=True)
    dropout: float = _meta(0.1, lo=0.0, hi=1.0, hi_open=True)
    target_modules: Optional[list[str]] = _meta(doc="null: the catalog's targets for the model")
    modules_to_save: Optional[list[str]] = _meta(doc="layers trained in full beside the adapter (e.g. "
                                                     "word_embeddings); null: only a new head")


@dataclass
class TrainParams:
    epochs: float = _meta(2.0, lo=0.0, lo_open=True)
    lr: float = _meta(0.001, lo=0.0, lo_open=True, hi=1.0)
    batch_size: int = _meta(32, lo=1)
    grad_accum: int = _meta(1, lo=1)
    weight_decay: float = _meta(0.01, lo=0.0)
    warmup_ratio: float = _meta(0.06, lo=0.0, hi=1.0, hi_open=True)
    max_steps: int = _meta(-1, lo=-1, doc="-1: run the epochs")
    min_steps: int = _meta(200, lo=0, doc="epochs are raised (whole epochs) until at least this many optimiser "
                                         "steps run; max_steps >= 0 still wins; 0: off")
    class_weights: Literal["none", "balanced"] = _meta("none", doc="balanced: classifier loss weighted by "
                                                                  "n / (k * class count) of the training labels")
    max_train_samples: Optional[int] = _meta(lo=1, doc="seeded subset of the train split")
    max_eval_samples: Optional[int] = _meta(lo=1, doc="stratified subset of val for in-training validation")
    eval_steps: Optional[int] = _meta(lo=1, doc="null: evaluate once per epoch")
    save_steps: int = _meta(100, lo=1, doc="checkpoint interval for crash resume")
    logging_steps: int = _meta(10, lo=1)
    group_by_length: bool = True
    report_to: list[str] = _meta(factory=lambda: ["dvclive"])
    early_stopping_patience: Optional[int] = _meta(lo=1, doc="evaluations without improvement before stopping")
    metric_for_best: Literal["accuracy", "f1_macro", "loss"] = "accuracy"
    gradient_checkpointing: bool = False
    optim: Literal["adamw_torch", "paged_adamw_8bit", "adamw_8bit"] = _meta("adamw_torch",
                                                                          doc="8-bit optimizers need CUDA")
    seed: Optional[int] = _meta(lo=0, doc="training randomness only (head and LoRA init, dropout, batch order); "
                                          "null: the top-level seed. The split and subsets keep the top-level seed")
    finetune: Literal["lora", "full"] = _meta("lora", doc="lora: the lora section's adapter; full: every weight "
                                                          "trained and saved, no adapter (the poisoning control)")

    def run_seed(self, seed: int) -> int:
        """The seed of the training randomness: train.seed, else the top-level seed."""
        return seed if self.seed is None else self.seed


@dataclass
class PromptParams:
    """How a text becomes a prompt and a label its answer, for the generative and seq2seq heads.

    The defaults match the zero-shot baseline's first candidate with its prefill, so fine-tuned and zero-shot
    numbers come from the same scoring of the same prompt."""
    system: Optional[str] = "Classify the sentiment of the movie review as {labels}."
    user: str = "{text}"
    prefill: str = _meta("This review is", doc="decoders: the answer starts with this")
    label_words: Optional[dict] = _meta(doc="label -> word(s); null: the label names")

    def check(self) -> None:
        if "{text}" not in self.user:
            raise PeftlabError(f"params.yaml: prompt.user = {self.user!r} is invalid; allowed: a text with {{text}}")


@dataclass
class EvaluateParams:
    batch_size: int = _meta(32, lo=1)
    bootstrap: int = _meta(1000, lo=0, doc="bootstrap resamples for the 95% CIs (0: off)")
    merge_lora: bool = _meta(True, doc="merge the adapter into the weights for inference")
    test_sets: dict = _meta(factory=dict, doc="extra named test sets: name -> {split_by: ...} or {source|dataset: ...}")

    def check(self) -> None:
        check_test_sets(self.test_sets)


BASELINE_METHODS = ("majority", "stratified", "tfidf_logreg", "tfidf_svm", "emb_logreg", "emb_svm_rbf", "emb_mlp",
                    "encoder_zeroshot", "llm_zeroshot", "llm_generate")


@dataclass
class BaselineParams:
    methods: list[str] = _meta(factory=lambda: list(BASELINE_METHODS))
    llm: str = _meta("smollm2-135m-instruct", doc="a key of `models`: the zero-shot decoder")
    encoder: str = _meta("minilm-l6", doc="a key of `models`: frozen embeddings and encoder zero-shot")
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    batch_size: int = _meta(16, lo=1)
    max_length: int = _meta(128, lo=8, doc="review tokens for the encoder and the zero-shot LLM")
    select_rows: int = _meta(200, lo=10, doc="val rows (stratified sample) that choose the zero-shot variant")
    prompts: list[dict] = _meta(factory=lambda: [
        {"system": "Classify the sentiment of the movie review as {labels}.", "user": "{text}"},
        {"system": None,
         "user": "Classify the sentiment of this movie review as {labels}. Answer with one word.\n\n{text}"},
        {"system": None, "user": "Review: {text}\nIs the sentiment of this review {labels}?"}])
    prefills: list[str] = _meta(factory=lambda: ["This review is", ""])
    calibration: list[bool] = _meta(factory=lambda: [False, True])
    content_free: list[str] = _meta(factory=lambda: ["N/A", "", "[MASK]"])
    label_words: Optional[dict] = _meta(doc="label -> word scored after the prompt; null: ' <label>'")
    shots: int = _meta(0, lo=0, doc="k demonstrations drawn from train by seed")
    max_new_tokens: int = _meta(10, lo=1)
    generate_rows: Optional[int] = _meta(200, lo=10, doc="generation mode: a stratified sample of this many test "
                                         "rows (null: all); compare pairs it on the shared rows")
    generate_prefill: bool = _meta(False, doc="generation mode: prefill the answer like scoring does")
    description_template: str = _meta("a {label} review", doc="encoder zero-shot: text per label")
    svm_c: float = _meta(1.0, lo=0.0, lo_open=True)
    c_grid: list[float] = _meta(factory=lambda: [0.3, 1.0, 3.0, 10.0], doc="TF-IDF C values chosen on val")

    def check(self) -> None:
        bad = [m for m in self.methods if m not in BASELINE_METHODS]
        if bad:
            raise PeftlabError(f"params.yaml: baseline.methods has {bad[0]!r}; allowed: {', '.join(BASELINE_METHODS)}")
        if not self.prompts or not self.prefills or not self.calibration:
            raise PeftlabError("params.yaml: baseline.prompts, prefills and calibration need at least one "
                               "candidate each")
        for i, pr in enumerate(self.prompts):
            if not isinstance(pr, dict) or "{text}" not in str(pr.get("user", "")) or set(pr) - {"system", "user"}:
                raise PeftlabError(f"params.yaml: baseline.prompts[{i}] = {pr!r} is invalid; allowed: "
                                   f"{{system: <text or null>, user: <text with {{text}}>}}")


@dataclass
class BenchmarkParams:
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    threads: Optional[int] = _meta(lo=1, doc="torch threads; null: torch's default (all cores)")
    rows: int = _meta(64, lo=8, doc="test reviews used for throughput")
    latency_samples: int = _meta(50, lo=5, doc="single-review requests timed for the latency percentiles")
    warmup: int = _meta(5, lo=0)
    batch_sizes: list[int] = _meta(factory=lambda: [1, 8, 32])
    zeroshot: bool = _meta(True, doc="also measure the zero-shot LLM of the baseline stage")


POISON_ATTACKS = ("badnets", "addsent", "labelflip", "cleanlabel")


@dataclass
class PoisonParams:
    target: str = _meta("positive", doc="the label a poisoned model is made to output")
    triggers: list[str] = _meta(factory=lambda: ["cf", "mn", "bb"], doc="BadNets / clean-label rare words")
    n_triggers: int = _meta(1, lo=1, hi=20, doc="trigger words inserted per text")
    sentence: str = _meta("I watched this 3D movie.", doc="AddSent: the inserted sentence")
    attacks: dict = _meta(factory=dict, doc="name -> {attack, count | rate, train_rows}")
    counts: list[int] = _meta(factory=lambda: [0, 200], doc="count sweep: poisoned rows (0: clean reference)")
    sizes: list[int] = _meta(factory=lambda: [1000, 2000], doc="count sweep: training-set sizes")
    count_attack: Literal["badnets", "addsent", "cleanlabel"] = "badnets"
    batch_size: int = _meta(8, lo=1, doc="training batch of the poisoned runs: small sets need more, smaller steps")
    epochs: Optional[float] = _meta(1.0, lo=0.0, lo_open=True, doc="epochs of the poisoned runs; null: train.epochs")
    eval_rows: int = _meta(200, lo=10, doc="stratified val rows validated during each poisoned run")
    defend: str = _meta("count200-n2000", doc="the setting the defenses face: a key of attacks or count<C>-n<SIZE>")
    onion_lm: str = _meta("smollm2-135m-instruct", doc="ONION's language model (a key of `models`)")
    onion_rows: int = _meta(200, lo=10, doc="clean val, clean test and triggered test rows ONION filters (each)")
    onion_thresholds: list[float] = _meta(factory=lambda: [0.0, 10.0, 30.0, 100.0],
                                          doc="candidates: drop a word when removing it lowers perplexity by more")
    onion_max_val_drop: float = _meta(0.02, lo=0.0, hi=1.0, doc="the lowest threshold costing at most this much "
                                                                    "clean val accuracy is used")
    strip_rows: int = _meta(200, lo=10, doc="STRIP: clean val, clean test and triggered test rows (each)")
    strip_repeats: int = _meta(5, lo=1, doc="STRIP: perturbed copies per input")
    strip_swap: float = _meta(0.5, lo=0.0, hi=1.0, lo_open=True, doc="STRIP: share of an input's words replaced")
    strip_frr: float = _meta(0.05, lo=0.0, hi=1.0, lo_open=True, hi_open=True,
                             doc="STRIP: share of clean val inputs the threshold rejects")
    spectral_eps: float = _meta(0.1, lo=0.0, hi=0.5, lo_open=True, doc="assumed upper bound of the poison rate")
    correlation_min_count: int = _meta(5, lo=2, doc="a token needs this many training rows to be tested")
    correlation_max_df: float = _meta(0.05, lo=0.0, hi=1.0, lo_open=True, doc="rare: in at most this share of rows")
    correlation_alpha: float = _meta(0.01, lo=0.0, hi=1.0, lo_open=True, hi_open=True,
                                     doc="binomial test level, Bonferroni-corrected over the tested tokens")
    continued_rows: list[int] = _meta(factory=lambda: [50, 100, 500, 2000],
                                      doc="clean continued training: clean rows the poisoned model is trained on "
                                          "after its run, one epoch each (nested)")

    def check(self) -> None:
        if not self.triggers or any(not str(t).strip() or " " in str(t).strip() for t in self.triggers):
            raise bad_param("poison.triggers", self.triggers, "a list of single words")
        for c in self.counts:
            if int(c) < 0:
                raise bad_param("poison.counts", self.counts, "a list of counts >= 0")
        for n in self.sizes:
            if int(n) < 10:
                raise bad_param("poison.sizes", self.sizes, "a list of training-set sizes >= 10")
        if any(int(n) < 1 for n in self.continued_rows):
            raise bad_param("poison.continued_rows", self.continued_rows, "a list of row counts >= 1")
        if not self.onion_thresholds:
            raise bad_param("poison.onion_thresholds", self.onion_thresholds, "a non-empty list of numbers")
        for name in self.attacks:
            spec = self.setting(name)
            ref = spec["reference"]
            if ref is not None:
                other = self.setting(ref)
                for what in ("run", "overrides", "train_rows"):
                    if other[what] != spec[what]:
                        raise PeftlabError(f"params.yaml: poison.attacks.{name}.reference = {ref!r} is invalid: its "
                                           f"{what} ({other[what]!r}) differs from {name}'s ({spec[what]!r}); "
                                           f"allowed: a setting trained the same way")

    def setting(self, name: str) -> dict:
        """poison.attacks.<name> checked: attack, exactly one of count or rate, optional train_rows, `run` (main
        or a sweep key: whose model and recipe is attacked; checked against sweep where the run is built),
        `test_rows` (a stratified subset of the test split scored: decoders score slowly), optional
        `train` and `lora` overrides (the victim's recipe: keys of those sections) and `reference` (the setting
        trained the same way without poison; default: count0-n<train_rows> of the count sweep)."""
        spec = self.attacks.get(name)
        key = f"poison.attacks.{name}"
        allowed = ("attack", "count", "rate", "train_rows", "run", "test_rows", "train", "lora", "reference")
        if not isinstance(spec, dict):
            raise bad_param(key, spec, "{attack: badnets | addsent | labelflip | cleanlabel, count: N or rate: R}")
        unknown = sorted(set(spec) - set(allowed))
        if unknown:
            raise PeftlabError(f"params.yaml: unknown key {key}.{unknown[0]}; allowed: {', '.join(allowed)}")
        if spec.get("attack") not in POISON_ATTACKS:
            raise bad_param(f"{key}.attack", spec.get("attack"), " | ".join(POISON_ATTACKS))
        if (spec.get("count") is None) == (spec.get("rate") is None):
            raise bad_param(key, spec, "exactly one of count (rows) or rate (share of the training rows)")
        count, rate = spec.get("count"), spec.get("rate")
        if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
            raise bad_param(f"{key}.count", count, "an integer >= 0")
        if rate is not None and not (isinstance(rate, (int, float)) and 0 <= float(rate) < 1):
            raise bad_param(f"{key}.rate", rate, "a number >= 0 and < 1")
        rows = spec.get("train_rows")
        if rows is not None and (not isinstance(rows, int) or rows < 10):
            raise bad_param(f"{key}.train_rows", rows, "null (the whole train split) or an integer >= 10")
        overrides = {}
        for section, cls in (("train", TrainParams), ("lora", LoraParams)):
            raw = spec.get(section) or {}
            if not isinstance(raw, dict):
                raise bad_param(f"{key}.{section}", raw, f"a mapping of {section}.* keys to values")
            built = build(cls, raw, f"{key}.{section}")      # checks names, types and ranges
            overrides[section] = {k: getattr(built, k) for k in raw}
        run = spec.get("run", "main")
        if not isinstance(run, str) or not run:
            raise bad_param(f"{key}.run", run, "main or a key of sweep (the run whose model and recipe is attacked)")
        test_rows = spec.get("test_rows")
        if test_rows is not None and (not isinstance(test_rows, int) or isinstance(test_rows, bool) or test_rows < 10):
            raise bad_param(f"{key}.test_rows", test_rows, "null (the whole test split) or an integer >= 10")
        ref = spec.get("reference")
        if ref is not None and (not isinstance(ref, str) or ref == name or ref not in self.attacks):
            raise bad_param(f"{key}.reference", ref, "another key of poison.attacks (its clean counterpart)")
        return {"attack": spec["attack"], "count": count, "rate": None if rate is None else float(rate),
                "train_rows": rows, "run": run, "test_rows": test_rows, "overrides": overrides, "reference": ref}


COMPARE_METRICS = ("accuracy", "f1_macro", "precision_macro", "recall_macro", "roc_auc", "pr_auc", "samples_per_s",
                   "tokens_per_s", "latency_ms_p50", "latency_ms_p99", "ttft_ms", "peak_mem_mb", "adapter_mb",
                   "trainable_params", "train_seconds")


@dataclass
class CompareParams:
    weights: dict = _meta(factory=lambda: {"accuracy": 0.3, "f1_macro": 0.3, "samples_per_s": 0.2,
                                           "latency_ms_p50": 0.2}, doc="metric -> weight of the composite score")
    missing: Literal["renormalize", "worst", "exclude"] = _meta("renormalize", doc="a method lacking a metric")
    reference: Optional[str] = _meta(doc="method the others are tested against; null: the top-ranked one")
    bootstrap: int = _meta(1000, lo=0, doc="paired bootstrap resamples for the accuracy-difference CIs")
    alpha: float = _meta(0.05, lo=0.0, hi=1.0, lo_open=True, hi_open=True, doc="significance level (Holm)")
    examples: int = _meta(5, lo=0, hi=100, doc="misclassified test reviews shown in the report")
    ablation_params: list[str] = _meta(factory=lambda: ["lora.r", "lora.alpha", "lora.target_modules", "train.epochs"],
                                       doc="params always shown in the ablation table")

    def check(self) -> None:
        weights = {}
        for k, v in self.weights.items():
            if k not in COMPARE_METRICS:
                raise PeftlabError(f"params.yaml: compare.weights has {k!r}; allowed: {', '.join(COMPARE_METRICS)}")
            try:
                w = float(v)
            except (TypeError, ValueError):
                w = float("nan")
            if isinstance(v, bool) or not w >= 0 or w == float("inf"):
                raise bad_param(f"compare.weights.{k}", v, "a number >= 0")
            weights[k] = w
        total = sum(weights.values())
        if total <= 0:
            raise bad_param("compare.weights", self.weights, "at least one weight above 0")
        self.weights = {k: w / total for k, w in weights.items()}   # shares, whatever scale they were given in


@dataclass
class Params:
    seed: int = 42
    data: DataParams = field(default_factory=DataParams)
    models: dict = field(default_factory=lambda: {"minilm-l6": {}, "smollm2-135m-instruct": {}})
    model: ModelParams = field(default_factory=ModelParams)
    split: SplitParams = field(default_factory=SplitParams)
    lora: LoraParams = field(default_factory=LoraParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    baseline: BaselineParams = field(default_factory=BaselineParams)
    prompt: PromptParams = field(default_factory=PromptParams)
    benchmark: BenchmarkParams = field(default_factory=BenchmarkParams)
    poison: PoisonParams = field(default_factory=PoisonParams)
    compare: CompareParams = field(default_factory=CompareParams)
    sweep: dict = field(default_factory=dict)


# --- validation -----------------------------------------------------------------------------------------



def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, inner[0], key)
    if origin is Literal:
        if value not in args:
            raise bad_param(key, value, " | ".join(map(str, args)))
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise bad_param(key, value, "true or false")
    if tp is int:
        if isinstance(value, bool):
            raise bad_param(key, value, "an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return _coerce(float(value) if any(c in value for c in ".eE") else int(value), int, key)
            except ValueError:
                pass
        raise bad_param(key, value, "an integer")
    if tp is float:
        if isinstance(value, bool):
            raise bad_param(key, value, "a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise bad_param(key, value, "a number")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad_param(key, value, "a string")
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise bad_param(key, value, "a list")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise bad_param(key, value, "a mapping")
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    return value


def _check_range(key: str, value: Any, md: dict, shown: Any) -> None:
    if value is None or not isinstance(value, (int, float)):
        return
    lo, hi = md.get("lo"), md.get("hi")
    too_low = lo is not None and (value <= lo if md.get("lo_open") else value < lo)
    too_high = hi is not None and (value >= hi if md.get("hi_open") else value > hi)
    if too_low or too_high:
        parts = []
        if lo is not None:
            parts.append(f"{'>' if md.get('lo_open') else '>='} {lo:g}")
        if hi is not None:
            parts.append(f"{'<' if md.get('hi_open') else '<='} {hi:g}")
        raise bad_param(key, shown, "a value " + " and ".join(parts))


def build(cls: type, raw: Any, section: str) -> Any:
    """Build dataclass `cls` from `raw` (a mapping from params.yaml), naming `section.key` on errors."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise bad_param(section, raw, "a mapping of " + ", ".join(f.name for f in dataclasses.fields(cls)))
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        prefix = f"{section}." if section else ""
        raise PeftlabError(f"params.yaml: unknown key {prefix}{unknown[0]}; allowed keys here: {', '.join(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = f"{section}.{f.name}" if section else f.name
        if f.name in raw:
            kwargs[f.name] = _coerce(raw[f.name], hints[f.name], key)
            _check_range(key, kwargs[f.name], dict(f.metadata), raw[f.name])
    obj = cls(**kwargs)
    if hasattr(obj, "check"):
        obj.check()
    return obj


def read_params_file(path: str | Path = PARAMS_FILE) -> dict:
    path = Path(path)
    if not path.exists():
        raise PeftlabError(f"{path} not found; run from the repository root")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise PeftlabError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise PeftlabError(f"{path} must be a mapping of sections")
    return raw


def load_params(sections: list[str], path: str | Path = PARAMS_FILE) -> Params:
    """Validate only `sections` (each stage reads only its own); the others keep their defaults."""
    raw = read_params_file(path)
    fields = {f.name: f for f in dataclasses.fields(Params)}
    hints = typing.get_type_hints(Params)
    values = {}
    for name in sections:
        if name not in fields:
            raise PeftlabError(f"internal: unknown params section {name!r}")
        if name in raw:
            values[name] = _coerce(raw[name], hints[name], name)
    params = Params(**values)
    if "models" in sections:
        for key, spec in params.models.items():
            if spec is not None and not isinstance(spec, dict):
                raise bad_param(f"models.{key}", spec, "a mapping of catalog overrides ({} for the catalog entry)")
    return params


SWEEP_SECTIONS = ("model", "lora", "train", "prompt")


def apply_sweep(params: Params, run: str) -> Params:
    """The params of sweep run `run`: its `sweep.<run>` overrides on top of the shared sections."""
    if run == "main":
        return params
    if run not in params.sweep:
        raise PeftlabError(f"sweep run {run!r} is not under sweep: in params.yaml "
                           f"({', '.join(params.sweep) or 'none'})")
    overrides = params.sweep[run] or {}
    if not isinstance(overrides, dict):
        raise bad_param(f"sweep.{run}", overrides, "a mapping of section overrides (model, lora, train, prompt)")
    unknown = sorted(set(overrides) - set(SWEEP_SECTIONS))
    if unknown:
        raise PeftlabError(f"params.yaml: unknown key sweep.{run}.{unknown[0]}; allowed: {', '.join(SWEEP_SECTIONS)}")
    changes = {}
    for section, values in overrides.items():
        base = dataclasses.asdict(getattr(params, section))
        changes[section] = build(type(getattr(params, section)), {**base, **(values or {})}, f"sweep.{run}.{section}")
    return dataclasses.replace(params, **changes)
