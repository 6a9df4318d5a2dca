"""split: clean, dedupe, length-filter and split data/raw into data/splits/{train,val,test}.parquet."""
from pathlib import Path

from peftlab.data import run_split
from peftlab.errors import run_cli
from peftlab.params import load_params


def main() -> None:
    params = load_params(["seed", "split", "model"])
    m = params.model

    def truncation(splits_dir: Path) -> dict:   # metrics/split.json only: the share model.max_length cuts
        from peftlab.truncation import split_truncation

        return {"truncation": split_truncation(splits_dir, Path("models/base") / m.name, m.name, m.max_length,
                                               m.trust_remote_code)}

    run_split(params, "data/raw", "data/splits", "metrics/split.json", extra_metrics=truncation)


if __name__ == "__main__":
    run_cli(main)
