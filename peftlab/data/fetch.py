"""The fetch stage: a dataset or a model from its catalog entry or inline spec into the pipeline's folders."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from peftlab.config.params import DataParams, Params
from peftlab.core.errors import PeftlabError
from peftlab.core.io import atomic_path, write_json
from peftlab.data.sources import fetch_model_files, load_catalog, read_source_frame, resolve_entry, to_contract


def dataset_entry(data: DataParams, catalog: dict | None = None) -> dict:
    """The dataset's catalog entry with params' inline fields on top, and its label order."""
    catalog = catalog or load_catalog()
    overrides = {k: v for k, v in vars(data).items() if k not in ("name", "labels", "max_samples")}
    entry = resolve_entry("datasets", data.name, overrides, catalog, "data.name")
    labels = data.labels or entry.get("labels")
    if not labels:
        raise PeftlabError(f"dataset {data.name!r} has no labels; set data.labels (e.g. [negative, positive])")
    if len(set(labels)) != len(labels) or len(labels) < 2:
        raise PeftlabError(f"data.labels = {labels} is invalid; allowed: two or more distinct names")
    entry["labels"] = [str(l) for l in labels]
    return entry


def fetch_data(params: Params, out_dir: str | Path) -> pd.DataFrame | dict:
    """fetch stage (data): source -> contract parquet + manifest, written atomically as one folder."""
    entry = dataset_entry(params.data)
    from peftlab.data import stream  # batches, caps and shards for sources of any size

    if stream.wants_streaming(entry):
        return stream.fetch_streaming(entry, params.seed, params.data.max_samples, out_dir,
                                      memory_limit_mb=params.split.memory_limit_mb, threads=params.split.threads)
    raw, class_names = read_source_frame(entry, params.data.max_samples)
    raw, entry = stream.apply_text_template(raw, entry)
    df, counts = to_contract(raw, entry, entry["labels"], class_names)
    if params.data.max_samples and len(df) > params.data.max_samples:
        df = df.sample(n=params.data.max_samples, random_state=params.seed).reset_index(drop=True)
        counts["sampled_rows"] = params.data.max_samples
    counts["rows"] = int(len(df))
    manifest = {"name": entry["name"], "source": entry["source"], "sha256": entry.get("sha256"),
                "labels": entry["labels"], "columns": list(df.columns), "counts": counts,
                "label_counts": {l: int((df["label_text"] == l).sum()) for l in entry["labels"]}}
    with atomic_path(out_dir, is_dir=True) as tmp:
        df.to_parquet(tmp / "data.parquet", index=False)
        write_json(tmp / "manifest.json", manifest)
    dropped = ", ".join(f"{k}={v}" for k, v in counts.items() if k.startswith("dropped") and v)
    print(f"fetched {entry['name']}: {len(df)} rows {manifest['label_counts']} (dropped: {dropped or 'none'})")
    return df


def model_entry(key: str, models: dict, catalog: dict | None = None) -> dict:
    if key not in models:
        raise PeftlabError(f"model {key!r} is not under models: in params.yaml ({', '.join(models)}); "
                           f"allowed: one of those, or add `{key}: {{}}` there to fetch it")
    entry = resolve_entry("models", key, models.get(key) or {}, catalog or load_catalog(), f"models.{key}")
    if entry.get("family") not in ("encoder", "decoder", "seq2seq"):
        raise PeftlabError(f"models.{key}.family = {entry.get('family')!r} is invalid; "
                           f"allowed: encoder | decoder | seq2seq")
    return entry


def fetch_model(params: Params, key: str, out_dir: str | Path) -> None:
    """fetch stage (model): a safetensors HF folder plus peftlab.json (family, head, LoRA targets)."""
    entry = model_entry(key, params.models)
    with atomic_path(out_dir, is_dir=True) as tmp:
        fetch_model_files(entry, tmp)
        write_json(tmp / "peftlab.json", entry)
    print(f"fetched model {key} from {entry['source']}")
