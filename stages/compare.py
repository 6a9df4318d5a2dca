"""compare: every metrics file in one ranked table, paired tests against the winner, figures and reports.

    python stages/compare.py                 reports/results.{csv,json,tex}, reports/report.md, plots/compare/
    python stages/compare.py --base main     ... and report.md gains the metric and param deltas against `main`
    python stages/compare.py --ablation      reports/ablation.{md,csv,tex} from `dvc exp show --json`
"""
import argparse

from peftlab.config.params import apply_sweep, load_params
from peftlab.core.errors import run_cli


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", help="git revision to diff metrics and params against (e.g. main, origin/main)")
    ap.add_argument("--ablation", action="store_true", help="only build the ablation table of the experiments")
    args = ap.parse_args()
    params = load_params(["seed", "model", "sweep", "baseline", "compare"])
    if args.ablation:
        from peftlab.compare.ablation import run_ablation

        df = run_ablation(params.compare.ablation_params)
        print(f"reports/ablation.md: {len(df)} experiments")
        return
    from peftlab.compare.rank import run_compare

    runs = {run: apply_sweep(params, run).model.name for run in ["main", *params.sweep]}
    report = run_compare(params.compare, runs, seed=params.seed, base=args.base,
                         baseline_models=(params.baseline.llm, params.baseline.encoder))
    ranked = report.table[report.table["score"].notna()]
    print(f"reports/report.md: {len(ranked)} ranked methods, reference {report.reference}")
    for _, r in ranked.head(5).iterrows():
        print(f"  #{r['rank']} {r['method']}: score {r['score']:.3f}, accuracy {r['accuracy']:.4f}")


if __name__ == "__main__":
    run_cli(main)
