"""poison: backdoor and label-flip attacks on the training split, their defenses, and the summary.

    python stages/poison.py attack <name>          a setting of poison.attacks
    python stages/poison.py count <count> <size>   an item of the count sweep (poison.counts x poison.sizes)
    python stages/poison.py onion                  ONION's per-word LM scores (cached for defend)
    python stages/poison.py defend                 ONION, STRIP, spectral signatures, token-label correlation
    python stages/poison.py report                 metrics/poison.json, plots/poison/ and reports/poison.md
    python stages/poison.py --study report         the full study's (study/dvc.yaml; its settings: stages/study.py)
                                                   metrics/study.json, plots/study/ and reports/poison_study.md
"""
import argparse

from peftlab.config.params import load_params
from peftlab.core import paths
from peftlab.core.errors import run_cli
from peftlab.data.split import read_labels
from peftlab.poison.attacks import count_setting, setting_from_params
from peftlab.poison.defenses import run_defenses, run_onion_scores
from peftlab.poison.runs import run_poison
from peftlab.poison.study import study_params
from peftlab.poison.summary import summarize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", action="store_true", help=f"report: the full study's settings ({paths.STUDY_PARAMS}) "
                                                         f"from its own output roots")
    sub = ap.add_subparsers(dest="what", required=True)
    sub.add_parser("attack").add_argument("name")
    count = sub.add_parser("count")
    count.add_argument("count", type=int)
    count.add_argument("size", type=int)
    sub.add_parser("onion")
    sub.add_parser("defend")
    sub.add_parser("report")
    args = ap.parse_args()
    params = load_params(["seed", "model", "lora", "train", "prompt", "sweep", "poison"])
    if args.study:
        if args.what != "report":
            ap.error(f"--study {args.what} is invalid; allowed: --study report (a study setting: stages/study.py)")
        summarize(study_params(params).poison, read_labels(paths.SPLITS_DIR), metrics_root=paths.STUDY_METRICS,
                  data_root=paths.STUDY_DATA, out=paths.STUDY_SUMMARY, plots=paths.STUDY_PLOTS,
                  study=paths.POISON_STUDY_REPORT, partial=True)
    elif args.what == "attack":
        run_poison(params, setting_from_params(params.poison, args.name))
    elif args.what == "count":
        run_poison(params, count_setting(params.poison, args.count, args.size))
    elif args.what == "onion":
        run_onion_scores(params)
    elif args.what == "defend":
        run_defenses(params)
    else:
        summarize(params.poison, read_labels(paths.SPLITS_DIR), study=paths.POISON_REPORT)


if __name__ == "__main__":
    run_cli(main)
