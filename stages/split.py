"""split: clean, dedupe, length-filter and split data/raw into data/splits/{train,val,test}.parquet."""
from peftlab.data.split import run_split
from peftlab.core.errors import run_cli
from peftlab.config.params import load_params
from peftlab.core import paths


def main() -> None:
    run_split(load_params(["seed", "split"]), paths.RAW, paths.SPLITS_DIR, paths.SPLIT_METRICS)


if __name__ == "__main__":
    run_cli(main)
