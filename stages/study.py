"""study: one setting of the full poisoning study (study/dvc.yaml; its grid: study/params.yaml).

    python stages/study.py <name>     train, score and record a setting of the study's grid
    python stages/poison.py --study report     (its report stage: metrics/study.json, reports/poison_study.md)

Apart from stages/poison.py so that these stages import only what trains and scores a victim: a change to the
report or the defenses leaves the study's runs fresh.
"""
import argparse

from peftlab.config.params import load_params
from peftlab.core import paths
from peftlab.core.errors import run_cli
from peftlab.poison.attacks import setting_from_params
from peftlab.poison.runs import run_poison
from peftlab.poison.study import study_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", help=f"a key of attacks in {paths.STUDY_PARAMS}")
    args = ap.parse_args()
    params = study_params(load_params(["seed", "model", "lora", "train", "prompt", "sweep", "poison"]))
    run_poison(params, setting_from_params(params.poison, args.name), data_root=paths.STUDY_DATA,
               adapter_root=paths.STUDY_ADAPTERS, metrics_root=paths.STUDY_METRICS)


if __name__ == "__main__":
    run_cli(main)
