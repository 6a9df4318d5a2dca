"""split: clean, dedupe, length-filter and split data/raw into data/splits/{train,val,test}.parquet."""
from peftlab.data import run_split
from peftlab.errors import run_cli
from peftlab.params import load_params


def main() -> None:
    run_split(load_params(["seed", "split"]), "data/raw", "data/splits", "metrics/split.json")


if __name__ == "__main__":
    run_cli(main)
