"""benchmark: latency, throughput, memory and size of every trained run (main + sweep) and the zero-shot LLM.

Writes metrics/benchmark.json and plots/benchmark/ (throughput against batch size, latency distribution).
Each model is measured in a fresh process, so its peak memory is its own.
"""
import argparse

from peftlab.config.params import load_params
from peftlab.core.errors import run_cli
from peftlab.evaluate.benchmark import run_benchmark


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()
    params = load_params(["benchmark", "evaluate", "baseline", "sweep"])
    run_benchmark(params, runs=["main", *params.sweep])


if __name__ == "__main__":
    run_cli(main)
