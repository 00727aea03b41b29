import numpy as np
import pandas as pd
import pytest

from evoprune.core.report_table import LEADING, comparison_table, summary_metrics

DENSE = {"exit1.test_accuracy": 0.80, "exit2.test_accuracy": 0.90, "flops": 100.0, "params": 10.0}


def _variant(name: str, drops: dict[int, float]) -> pd.DataFrame:
    flops = {1: 0.5, 2: 0.2}
    return pd.DataFrame(
        [
            {"variant": name, "member": m, "flops_ratio": flops[m], "params_ratio": 0.5, "test_accuracy": 0.9 - d / 100}
            | {"accuracy_drop_pt": d}
            for m, d in drops.items()
        ]
    )


@pytest.fixture
def table():
    baselines = pd.DataFrame(
        {"criterion": ["l1", "l1"], "member": [1, 2], "flops_budget": [0.5, 0.2], "accuracy_drop_pt": [2.0, 5.0]}
    ).assign(flops_ratio=[0.5, 0.2], params_ratio=0.5, test_accuracy=0.85)
    chosen = pd.DataFrame({"member": [1, 2], "exit1_accuracy": [0.7, 0.6], "exit2_accuracy": [0.88, 0.80]})
    variants = [_variant("keep", {1: 1.0, 2: 4.0}), _variant("rewind", {1: 1.5, 2: 3.0}), _variant("sign", {})[:0]]
    return comparison_table(DENSE, baselines, chosen, variants)


def test_one_row_per_model_with_the_dense_reference_first(table):
    assert list(table.columns[: len(LEADING)]) == LEADING
    assert table["kind"].tolist() == ["dense"] + ["member"] * 4 + ["baseline"] * 2
    assert table["method"].tolist() == ["dense", "keep", "keep", "rewind", "rewind", "l1", "l1"]
    dense = table.iloc[0]
    assert (dense["test_accuracy"], dense["flops_ratio"], dense["accuracy_drop_pt"]) == (0.90, 1.0, 0.0)
    before = table.set_index(["method", "member"])["val_accuracy_before_finetune"]
    assert before[("keep", 2)] == 0.80 and before[("l1", 1)] == 0.88 and np.isnan(before[("dense", -1)])


def test_summary_compares_the_best_variant_with_each_baseline(table):
    summary = summary_metrics(table)
    assert summary["member1.best_drop_pt"] == 1.0 and summary["member2.best_drop_pt"] == 3.0
    assert summary["member1.margin_over_l1_pt"] == pytest.approx(1.0)  # l1 lost 2.0, keep 1.0
    assert summary["member2.margin_over_l1_pt"] == pytest.approx(2.0)  # l1 lost 5.0, rewind 3.0
    assert summary["variant.keep.mean_drop_pt"] == pytest.approx(2.5)
    assert summary["best_drop_pt_within_25pct_flops"] == 3.0  # member 2 keeps 20% of the FLOPs
    assert not [k for k in summary if "sign" in k]  # a skipped variant adds nothing


def test_rows_of_methods_beside_prune_keep_their_kind_and_members_stay_first(table):
    baselines = table[table["kind"] == "baseline"].rename(columns={"method": "criterion"}).drop(columns="kind")
    chosen = pd.DataFrame({"member": [1, 2], "exit1_accuracy": [0.7, 0.6], "exit2_accuracy": [0.88, 0.80]})
    dst = pd.DataFrame(
        {"kind": ["dst", "dst"], "method": ["dst_structured", "l1_at_dst_flops"], "member": [-1, -1]}
    ).assign(flops_ratio=[0.3, 0.29], params_ratio=0.4, test_accuracy=[0.89, 0.87], accuracy_drop_pt=[1.0, 3.0])
    with_dst = comparison_table(DENSE, baselines, chosen, [_variant("keep", {1: 1.0})], {"dst": dst, "empty": dst[:0]})
    assert with_dst["kind"].tolist() == ["dense", "member", "baseline", "baseline", "dst", "dst"]
    assert with_dst["method"].tolist()[-2:] == ["dst_structured", "l1_at_dst_flops"]
    assert summary_metrics(with_dst) == summary_metrics(
        with_dst[with_dst["kind"] != "dst"]
    )  # members' summary unchanged


def test_members_carry_their_predicted_latency_and_other_rows_none():
    baselines = pd.DataFrame({"criterion": ["l1"], "member": [1], "accuracy_drop_pt": [2.0]}).assign(
        flops_ratio=0.5, params_ratio=0.5, test_accuracy=0.85
    )
    chosen = pd.DataFrame({"member": [1, 2], "exit2_accuracy": [0.88, 0.80], "latency_ratio": [0.7, 0.4]})
    table = comparison_table(DENSE, baselines, chosen, [_variant("keep", {1: 1.0, 2: 4.0})])
    predicted = table.set_index(["kind", "member"])["predicted_latency_ratio"]
    assert predicted[("member", 1)] == 0.7 and predicted[("member", 2)] == 0.4
    assert np.isnan(predicted[("baseline", 1)]) and np.isnan(predicted[("dense", -1)])  # other masks: not predicted
