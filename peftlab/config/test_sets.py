"""The grammar of `evaluate.test_sets` (checked at stage start, one clear line per mistake); the test sets
themselves are built by peftlab.data.test_sets."""
from __future__ import annotations

from peftlab.core.errors import PeftlabError, bad_param

SLICE_COLUMNS = ("category", "group", "rating", "label_text", "words")
SLICE_FORMS = ("values", "range", "quantiles")
SOURCE_KEYS = ("dataset", "source", "sha256", "config", "split", "format", "encoding", "text_column",
               "label_column", "category_column", "rating_column", "group_column", "label_map", "drop_values",
               "text_template", "max_rows")


def _bad(name: str, value, allowed: str) -> PeftlabError:
    return bad_param(f"evaluate.test_sets.{name}", value, allowed)


def check_test_sets(test_sets: dict) -> None:
    """Validate the grammar at stage start, one clear line per mistake."""
    for name, spec in test_sets.items():
        if str(name) == "test":
            raise _bad(name, spec, "another name: `test` is the test split itself, always evaluated")
        if not isinstance(spec, dict):
            raise _bad(name, spec, "{split_by: <column>, values: [...] | range: [lo, hi] | quantiles: [qlo, qhi]} or "
                                   "{dataset: <catalog key> | source: <spec>, ...column mapping}")
        if "split_by" in spec:
            unknown = sorted(set(spec) - {"split_by", *SLICE_FORMS})
            if unknown:
                raise PeftlabError(f"params.yaml: unknown key evaluate.test_sets.{name}.{unknown[0]}; "
                                   f"allowed with split_by: {', '.join(SLICE_FORMS)}")
            if spec["split_by"] not in SLICE_COLUMNS:
                raise _bad(f"{name}.split_by", spec["split_by"], " | ".join(SLICE_COLUMNS))
            if sum(k in spec for k in SLICE_FORMS) != 1:
                raise _bad(name, spec, "exactly one of values: [...], range: [lo, hi] or quantiles: [qlo, qhi]")
            if "values" in spec and (not isinstance(spec["values"], list) or not spec["values"]):
                raise _bad(f"{name}.values", spec["values"], "a non-empty list")
            r = spec.get("range")
            if "range" in spec and not (isinstance(r, list) and len(r) == 2 and all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) for x in r) and r[0] <= r[1]):
                raise _bad(f"{name}.range", r, "[lo, hi] with numbers lo <= hi (both inclusive)")
            q = spec.get("quantiles")
            if "quantiles" in spec and not (isinstance(q, list) and len(q) == 2 and all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) for x in q) and 0 <= q[0] < q[1] <= 1):
                raise _bad(f"{name}.quantiles", q, "[qlo, qhi] with 0 <= qlo < qhi <= 1 (rows with "
                                                   "quantile(qlo) <= value < quantile(qhi); qhi = 1 inclusive)")
        elif "dataset" in spec or "source" in spec:
            unknown = sorted(set(spec) - set(SOURCE_KEYS))
            if unknown:
                raise PeftlabError(f"params.yaml: unknown key evaluate.test_sets.{name}.{unknown[0]}; "
                                   f"allowed with a source: {', '.join(SOURCE_KEYS)}")
            m = spec.get("max_rows")
            if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
                raise _bad(f"{name}.max_rows", m, "an integer >= 1, or null (all rows)")
        else:
            raise _bad(name, spec, "a mapping with split_by (a slice of the test split) or with dataset/source "
                                   "(an extra labelled source)")
