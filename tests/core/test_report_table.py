import numpy as np
import pandas as pd
import pytest

from evoprune.core.report_table import LEADING, budget_verdicts, comparison_table, summary_metrics

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


SEEDS = [42, 43, 44]


def _seeded(method: str, member: int, accuracies: list[float], flops: float) -> list[dict]:
    return [
        {"member": member, "seed": s, "flops_ratio": flops, "params_ratio": 0.5, "test_accuracy": a}
        | {"accuracy_drop_pt": 100 * (0.9 - a), "variant": method}
        for s, a in zip(SEEDS, accuracies, strict=True)
    ]


@pytest.fixture
def seeded():
    """Planted accuracies over three seeds: at member 1 keep beats l1 by [1, 2, 2] pt; at member 2 l1 wins."""
    keep = pd.DataFrame(_seeded("keep", 1, [0.90, 0.91, 0.92], 0.5) + _seeded("keep", 2, [0.80, 0.82, 0.78], 0.2))
    rewind = pd.DataFrame(_seeded("rewind", 1, [0.88, 0.88, 0.88], 0.5) + _seeded("rewind", 2, [0.7] * 3, 0.2))
    rows = _seeded("l1", 1, [0.89, 0.89, 0.90], 0.5) + _seeded("random", 1, [0.85, 0.86, 0.95], 0.5)
    rows += _seeded("l1", 2, [0.81, 0.81, 0.81], 0.2) + _seeded("random", 2, [0.75, 0.75, 0.75], 0.2)
    baselines = pd.DataFrame(rows).rename(columns={"variant": "criterion"})
    chosen = pd.DataFrame({"member": [1, 2], "exit2_accuracy": [0.88, 0.80]})
    return comparison_table(DENSE, baselines, chosen, [keep, rewind])


def test_one_row_per_method_budget_and_seed_with_mean_std_and_paired_margin(seeded):
    models = seeded[seeded["kind"] != "dense"]
    assert len(models) == 4 * 2 * 3 and not models.duplicated(["kind", "method", "member", "seed"]).any()
    keep1 = models[(models["method"] == "keep") & (models["member"] == 1)]
    assert keep1["test_accuracy_mean"].tolist() == pytest.approx([0.91] * 3)
    assert keep1["test_accuracy_std"].tolist() == pytest.approx([0.01] * 3)
    assert (keep1["n_seeds"] == 3).all()
    # the best baseline at member 1 is l1 by its mean (0.8933 > random's 0.8867), though random wins seed 44
    assert (keep1["best_baseline"] == "l1").all()
    assert keep1["margin_over_best_baseline_pt"].tolist() == pytest.approx([1.0, 2.0, 2.0])
    assert keep1["margin_over_best_baseline_pt_mean"].iloc[0] == pytest.approx(5 / 3)
    assert keep1["margin_over_best_baseline_pt_std"].iloc[0] == pytest.approx(np.std([1, 2, 2], ddof=1))
    l1 = models[(models["method"] == "l1") & (models["member"] == 1)]
    assert l1["margin_over_best_baseline_pt"].tolist() == pytest.approx([0.0] * 3)


def test_verdicts_name_the_winner_of_each_budget_and_whether_it_is_beyond_the_std(seeded):
    verdicts = budget_verdicts(seeded).set_index("member")
    one, two = verdicts.loc[1], verdicts.loc[2]
    assert (one["best_member_method"], one["best_baseline"], one["winner"]) == ("keep", "l1", "member: keep")
    assert one["member_wins"] and one["margin_exceeds_std"] and one["n_seeds"] == 3
    assert one["margin_pt_mean"] == pytest.approx(5 / 3)
    assert (two["best_member_method"], two["winner"]) == ("keep", "baseline: l1")
    assert two["margin_pt_mean"] == pytest.approx(-1.0) and not two["member_wins"] and not two["margin_exceeds_std"]
    summary = summary_metrics(seeded)
    assert summary["member1.margin_over_best_baseline_pt"] == pytest.approx(5 / 3)
    assert summary["member1.member_wins"] == 1.0 and summary["member2.member_wins"] == 0.0
    assert summary["budgets_won_by_members"] == 1.0 and summary["budgets_won_beyond_std"] == 1.0
    assert summary["member1.margin_over_l1_pt"] == pytest.approx(
        100 * (0.91 - (0.89 + 0.89 + 0.90) / 3)
    )  # of the means


def test_one_seed_gives_no_std_and_never_a_margin_beyond_it(table):
    verdicts = budget_verdicts(table).set_index("member")
    assert np.isnan(verdicts.loc[1, "margin_pt_std"]) and not verdicts.loc[1, "margin_exceeds_std"]
    # keep's 0.89 against l1's 0.85: the margin is read from the test accuracies
    assert verdicts.loc[1, "margin_pt_mean"] == pytest.approx(4.0) and verdicts.loc[1, "member_wins"]


def _with_policy(rows: pd.DataFrame, accuracies: list[float], expected_flops: float) -> pd.DataFrame:
    return rows.assign(**{"early_exit.test_accuracy": accuracies, "early_exit.expected_flops": expected_flops})


def test_the_exit_search_is_judged_on_the_early_exit_policy_of_both_searches_networks(seeded):
    """Planted: at member 1 the exit search gains [1, 3, 2] pt of policy accuracy at fewer expected FLOPs; at
    member 2 it gains accuracy at more FLOPs (a trade-off)."""
    baselines = seeded[seeded["kind"] == "baseline"].rename(columns={"method": "criterion"})
    keep = seeded[(seeded["kind"] == "member") & (seeded["method"] == "keep")].rename(columns={"method": "variant"})
    keep = pd.concat(
        [
            _with_policy(keep[keep["member"] == 1], [0.80, 0.80, 0.81], 30.0),
            _with_policy(keep[keep["member"] == 2], [0.7] * 3, 15.0),
        ]
    )
    every = pd.DataFrame(
        _seeded("search_mean_error", 1, [0.89] * 3, 0.48) + _seeded("search_mean_error", 2, [0.8] * 3, 0.2)
    )
    every = every.rename(columns={"variant": "method"}).assign(kind="exit_search")
    every = pd.concat(
        [
            _with_policy(every[every["member"] == 1], [0.81, 0.83, 0.83], 25.0),
            _with_policy(every[every["member"] == 2], [0.72] * 3, 18.0),
        ]
    )
    chosen = pd.DataFrame({"member": [1, 2], "exit2_accuracy": [0.88, 0.80]})
    table = comparison_table(
        DENSE, baselines.drop(columns="kind"), chosen, [keep.drop(columns="kind")], {"exit_search": every}
    )
    verdicts = budget_verdicts(table).set_index("member")
    one, two = verdicts.loc[1], verdicts.loc[2]
    assert one["early_exit.margin_pt_mean"] == pytest.approx(2.0)
    assert one["early_exit.margin_pt_std"] == pytest.approx(1.0)
    assert one["early_exit.final_search_expected_flops_ratio"] == pytest.approx(0.30)
    assert one["early_exit.exit_search_expected_flops_ratio"] == pytest.approx(0.25)
    assert one["early_exit.verdict"] == "exit_search dominates" and two["early_exit.verdict"] == "trade-off"
    assert one["early_exit.exit_search_method"] == "search_mean_error"
    summary = summary_metrics(table)
    assert summary["member1.exit_search.dominates"] == 1.0 and summary["member2.exit_search.dominates"] == 0.0
    assert summary["member2.exit_search.expected_flops_ratio_diff"] == pytest.approx(0.03)
    assert "early_exit.verdict" not in budget_verdicts(seeded)  # no exit search, no such columns
