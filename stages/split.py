"""split: clean, dedupe, length-filter and split data/raw into data/splits/{train,val,test}.parquet.

metrics/split.json also gets the share of texts that `model.max_length` truncates (with model.name's tokenizer);
only that metric reads the model, the split files never do.
"""
from functools import partial

from peftlab.config.params import load_params
from peftlab.core import paths
from peftlab.core.errors import run_cli
from peftlab.data.split import run_split
from peftlab.modeling.truncation import split_truncation_metrics


def main() -> None:
    params = load_params(["seed", "split", "model"])
    run_split(params, paths.RAW, paths.SPLITS_DIR, paths.SPLIT_METRICS,
              extra_metrics=partial(split_truncation_metrics, params.model))


if __name__ == "__main__":
    run_cli(main)
