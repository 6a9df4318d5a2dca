"""split: clean, dedupe, length-filter and split data/raw into data/splits/{train,val,test}.parquet."""
import sys
from pathlib import Path

from peftlab.data import run_split
from peftlab.errors import run_cli
from peftlab.params import load_params


def main() -> None:
    params = load_params(["seed", "split", "model"])
    m = params.model

    def truncation(splits_dir: Path) -> dict:   # metrics/split.json only: the share model.max_length cuts
        from peftlab.truncation import split_truncation

        base = Path("models/base") / m.name
        if not (base / "peftlab.json").is_file():   # run by hand before any fetch (dvc repro always fetches it)
            print(f"warning: {base} is not fetched, so metrics/split.json has no truncation share; "
                  f"run `dvc repro fetch_model@{m.name}` first", file=sys.stderr)
            return {}
        return {"truncation": split_truncation(splits_dir, base, m.name, m.max_length, m.trust_remote_code)}

    run_split(params, "data/raw", "data/splits", "metrics/split.json", extra_metrics=truncation)


if __name__ == "__main__":
    run_cli(main)
