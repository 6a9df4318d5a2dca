"""Fetch and split at Amazon-Reviews-2023 scale: the DuckDB path beside the code it replaced, same run.

Builds a source shaped like McAuley-Lab/Amazon-Reviews-2023 in Hub layout (README.md with one config per
category, `raw_review_<Category>/full-NNNNN-of-NNNNN.parquet` files of at most 300k rows, the real review
columns: rating, title, text, images, asin, parent_asin, user_id, timestamp, helpful_vote, verified_purchase),
with N rows over the 33 categories in a skewed, Zipf-like mix (like the real corpus: Books and Home are huge,
Gift_Cards tiny), written chunk by chunk so the generator never holds the source either. Then runs the real
stages as subprocesses in a scratch project, with the catalog entry `amazon_reviews_2023` pointed at the folder
(`local:`), once with this checkout and once with the old code (a git worktree of `--old-rev`, default
be9be21: the hand-rolled batches of stream.py and split_scale.py), on the same source:

    fetch (first 100k per category)      python stages/fetch.py data   (data.sample: first)
    fetch (seeded sample, 100k/category) python stages/fetch.py data   (data.sample: reservoir: reads every row)
    split                                python stages/split.py        (on the first-N fetch)

and prints, for each, wall time, source rows read per second (fetch: the rows the stage reports reading;
split: its input rows) and the child process' peak RSS (os.wait4), the new/old speed ratio, whether the new
path's peak RSS stays within split.memory_limit_mb + 300 MB, and a projection of the 3.3M-row plan (100k per
category) and of the whole 571M-row corpus from the measured rates.

    python benchmarks/amazon_reviews_scale.py                       # 5,000,000 rows
    python benchmarks/amazon_reviews_scale.py --rows 1000000 5000000
Disk: about 0.5 GB per million rows under --workdir (default /tmp), removed afterwards unless --keep.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MEMORY_LIMIT_MB = 512      # split.memory_limit_mb's default: DuckDB's limit
RSS_SLACK_MB = 300         # the acceptance: peak RSS within the limit plus this
PLAN_ROWS, CORPUS_ROWS = 3_300_000, 571_000_000
CHUNK = 100_000
FILE_ROWS = 300_000   # rows per parquet file: the Hub shards big splits into files of a few hundred MB

POS = ["love this", "works great", "highly recommend", "excellent quality", "fits perfectly", "five stars",
       "exactly as described", "very happy with it", "great value", "my kids love it", "arrived quickly",
       "better than expected", "sturdy and well made", "would buy again", "beautiful color"]
NEG = ["broke after a week", "waste of money", "does not work", "very disappointed", "cheaply made",
       "returned it", "stopped working", "poor quality", "not as described", "fell apart", "too small",
       "customer service was useless", "smells awful", "would not recommend", "arrived damaged"]
FILLER = ["the", "product", "I", "bought", "this", "for", "my", "daughter", "and", "it", "was", "after", "using",
          "for", "two", "months", "honestly", "overall", "the", "packaging", "price", "battery", "size", "color",
          "material", "delivery", "seller", "instructions", "really", "quite", "a", "bit", "also", "but"]


def categories() -> list[str]:
    from peftlab.data.sources import load_catalog

    entry = load_catalog(REPO / "catalog.yaml")["datasets"]["amazon_reviews_2023"]
    return [c[len(entry["config_prefix"]):] for c in entry["configs"]]


def _sentences(rng: np.random.Generator, n: int, words: list[str], k: tuple[int, int]) -> list[str]:
    lens = rng.integers(k[0], k[1], n)
    return [" ".join(rng.choice(words, size=int(l))) for l in lens]


def generate(root: Path, n_rows: int, seed: int = 0) -> dict[str, int]:
    """Write the Hub-layout source; returns rows per category."""
    rng = np.random.default_rng(seed)
    cats = categories()
    weights = 1.0 / np.arange(1, len(cats) + 1) ** 1.1
    sizes = np.floor(weights / weights.sum() * n_rows).astype(int)
    sizes[0] += n_rows - sizes.sum()
    # A pool of sentences: reviews are joined from it with pyarrow compute (vectorised, no per-row Python).
    pool_pos = pa.array(_sentences(rng, 20_000, POS * 3 + FILLER, (6, 14)))
    pool_neg = pa.array(_sentences(rng, 20_000, NEG * 3 + FILLER, (6, 14)))
    pool_mid = pa.array(_sentences(rng, 20_000, POS + NEG + FILLER, (6, 14)))
    root.mkdir(parents=True)
    readme = ["---", "configs:"]
    row_id = 0
    for cat, size in zip(cats, sizes):
        folder = root / f"raw_review_{cat}"
        folder.mkdir()
        readme += [f"- config_name: raw_review_{cat}", "  data_files:", "  - split: full",
                   f"    path: raw_review_{cat}/full-*"]
        writer = None
        for start in range(0, int(size), CHUNK):
            n = int(min(CHUNK, size - start))
            rating = rng.choice([1.0, 2.0, 3.0, 4.0, 5.0], size=n, p=[0.11, 0.06, 0.08, 0.15, 0.60])
            pools = np.where(rating >= 4, 0, np.where(rating <= 2, 1, 2))
            parts = []
            for _ in range(4):   # four sentences a review, each from the pool its rating calls for
                idx = rng.integers(0, 20_000, n)
                s = pc.if_else(pa.array(pools == 0), pc.take(pool_pos, pa.array(idx)),
                               pc.if_else(pa.array(pools == 1), pc.take(pool_neg, pa.array(idx)),
                                          pc.take(pool_mid, pa.array(idx))))
                parts.append(s)
            ids = pc.cast(pa.array(np.arange(row_id, row_id + n)), pa.string())
            row_id += n
            text = pc.binary_join_element_wise(*parts, pc.binary_join_element_wise("ref", ids, "-"), ". ")
            # ~1% of reviews repeat an earlier one word for word (bots, double posts): split's dedupe has work.
            src = np.arange(n)
            dup = rng.random(n) < 0.01
            src[dup] = (src[dup] * 0.9).astype(int)
            text = pc.take(text, pa.array(src))
            table = pa.table({
                "rating": pa.array(rating),
                "title": pc.take(pool_mid, pa.array(rng.integers(0, 20_000, n))),
                "text": text,
                "images": pa.array([[]] * n, type=pa.list_(pa.string())),
                "asin": pc.cast(pa.array(rng.integers(10**9, 2 * 10**9, n)), pa.string()),
                "parent_asin": pc.cast(pa.array(rng.integers(10**9, 10**9 + max(n // 20, 1), n)), pa.string()),
                "user_id": pc.cast(pa.array(rng.integers(0, 10**12, n)), pa.string()),
                "timestamp": pa.array(rng.integers(1.3e12, 1.7e12, n)),
                "helpful_vote": pa.array(rng.poisson(0.7, n)),
                "verified_purchase": pa.array(rng.random(n) < 0.9),
            })
            if start % FILE_ROWS == 0:   # a new file, named as the Hub's parquet shards are
                if writer is not None:
                    writer.close()
                n_files = -(-int(size) // FILE_ROWS)
                writer = pq.ParquetWriter(folder / f"full-{start // FILE_ROWS:05d}-of-{n_files:05d}.parquet",
                                          table.schema)
            writer.write_table(table, row_group_size=CHUNK)
        writer.close()
    (root / "README.md").write_text("\n".join(readme + ["---", "# synthetic Amazon-Reviews-2023-shaped source"])
                                    + "\n")
    return dict(zip(cats, map(int, sizes)))


def run_measured(project: Path, repo: Path, args: list[str], env: dict) -> tuple[float, float, str]:
    """As run_stage, but the child's own peak RSS from os.wait4 (Popen.communicate would reap it first)."""
    start = time.perf_counter()
    out_path = project / ".stdout"
    with open(out_path, "w") as out:
        proc = subprocess.Popen([sys.executable, str(repo / "stages" / args[0]), *args[1:]], cwd=project,
                                env={**env, "PYTHONPATH": str(repo)}, stdout=out, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
    secs = time.perf_counter() - start
    text = out_path.read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{repo}: {args} failed:\n{text[-3000:]}")
    return secs, usage.ru_maxrss / 1024, text.strip().splitlines()[-1]


def source_rows_read(line: str) -> int:
    m = re.search(r"from ([0-9,]+) source rows", line)
    return int(m[1].replace(",", "")) if m else 0


def one_size(n_rows: int, cap: int, work: Path, modes: list[str], repos: dict[str, Path]) -> dict:
    src = work / f"source-{n_rows}"
    t0 = time.perf_counter()
    sizes = generate(src, n_rows)
    gen_s = time.perf_counter() - t0
    disk = sum(f.stat().st_size for f in src.rglob("*.parquet")) / 1e6
    print(f"\n== {n_rows:,} source rows in {len(sizes)} categories (largest {max(sizes.values()):,}, smallest "
          f"{min(sizes.values()):,}; {disk:,.0f} MB parquet; generated in {gen_s:.0f} s)", flush=True)
    env = {**os.environ, "HF_HOME": str(work / "hf-home"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TQDM_DISABLE": "1"}
    results: dict = {}
    for version, repo in repos.items():
        project = work / f"project-{n_rows}-{version}"
        project.mkdir()
        shutil.copy(repo / "catalog.yaml", project / "catalog.yaml")
        for mode in modes:
            params = {"seed": 42, "data": {"name": "amazon_reviews_2023", "source": f"local:{src}",
                                           "per_category": cap, "sample": mode}, "split": {"val": 0.1, "test": 0.1}}
            (project / "params.yaml").write_text(yaml.safe_dump(params))
            secs, rss, line = run_measured(project, repo, ["fetch.py", "data"], env)
            read = source_rows_read(line)
            results[(f"fetch ({mode})", version)] = (secs, rss, read)
            print(f"{version} fetch {mode:9s}: {secs:6.1f} s, {read / secs:10,.0f} source rows/s, peak RSS "
                  f"{rss:5.0f} MB | {line}", flush=True)
            if mode == modes[0]:   # split what the first fetch kept
                secs, rss, line = run_measured(project, repo, ["split.py"], env)
                n_in = json.loads((project / "metrics" / "split.json").read_text())["counts"]["input_rows"]
                results[("split", version)] = (secs, rss, n_in)
                print(f"{version} split          : {secs:6.1f} s, {n_in / secs:10,.0f} rows/s, peak RSS "
                      f"{rss:5.0f} MB | {line}", flush=True)
                shutil.rmtree(project / "data" / "splits")
        shutil.rmtree(project)
    return results


def old_worktree(rev: str, work: Path) -> Path:
    path = work / f"old-{rev}"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), rev], check=True,
                   capture_output=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[5_000_000])
    ap.add_argument("--cap", type=int, default=100_000, help="data.per_category")
    ap.add_argument("--modes", nargs="+", default=["first", "reservoir"], choices=["first", "reservoir"])
    ap.add_argument("--old-rev", default="be9be21", help="the code to compare with (git revision)")
    ap.add_argument("--old-repo", default=None, help="a checkout of the old code instead of a worktree of --old-rev")
    ap.add_argument("--workdir", default="/tmp")
    ap.add_argument("--keep", action="store_true", help="keep the generated source and outputs")
    args = ap.parse_args()
    work = Path(args.workdir) / f"peftlab-amazon-scale-{os.getpid()}"
    work.mkdir(parents=True)
    old = Path(args.old_repo) if args.old_repo else old_worktree(args.old_rev, work)
    try:
        by_size = {n: one_size(n, args.cap, work, args.modes, {"old": old, "new": REPO}) for n in args.rows}
    finally:
        if not args.old_repo:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)], capture_output=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    limit = MEMORY_LIMIT_MB + RSS_SLACK_MB
    print(f"\n| step | source | old: s, rows/s, peak RSS | new: s, rows/s, peak RSS | speed new/old | new RSS <= "
          f"{limit} MB |\n|---|---:|---|---|---:|---|")
    ok = True
    for n, res in by_size.items():
        for step in dict.fromkeys(s for s, _ in res):
            (os_, orss, oread), (ns, nrss, nread) = res[(step, "old")], res[(step, "new")]
            ratio = (nread / ns) / (oread / os_)
            ok &= nrss <= limit
            print(f"| {step} | {n / 1e6:g}M | {os_:.1f} s, {oread / os_:,.0f}/s, {orss:,.0f} MB | {ns:.1f} s, "
                  f"{nread / ns:,.0f}/s, {nrss:,.0f} MB | {ratio:.1f}x | {'yes' if nrss <= limit else 'NO'} |")
    n = max(by_size)
    res = by_size[n]
    print(f"\nprojection from the {n / 1e6:g}M-row rates (rows/s as measured; linear):")
    for version in ("old", "new"):
        rate = {step: res[(step, version)][2] / res[(step, version)][0] for step, v in res if v == version}
        parts = [f"split of the {PLAN_ROWS / 1e6:.1f}M-row plan {PLAN_ROWS / rate['split'] / 60:,.1f} min"]
        if "fetch (reservoir)" in rate:
            parts.append(f"reading all {CORPUS_ROWS / 1e6:.0f}M reviews (reservoir fetch) "
                         f"{CORPUS_ROWS / rate['fetch (reservoir)'] / 3600:,.2f} h")
        parts.append(f"split of all {CORPUS_ROWS / 1e6:.0f}M {CORPUS_ROWS / rate['split'] / 3600:,.2f} h")
        print(f"  {version}: " + "; ".join(parts))
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
