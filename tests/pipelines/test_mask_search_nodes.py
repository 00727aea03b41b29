from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from pydantic import ValidationError

from evoprune.core.exits import attach_exits
from evoprune.core.latency import LatencyKeyError, LatencyModel, profile_latency
from evoprune.core.mask_codec import decode_masks
from evoprune.core.masking import population_masks, prune_physically
from evoprune.core.models import build_model
from evoprune.core.train import as_exit_list
from evoprune.core.units import build_layout, kept_column
from evoprune.datasets import PrunedMembersDataset
from evoprune.pipelines.latency_profile.nodes import LatencyProfileParams
from evoprune.pipelines.mask_search.nodes import (
    MaskSearchParams,
    choose_members,
    export_members,
    plot_pareto_front,
    search_masks,
    tabulate_roulette_path,
    tabulate_search,
    time_front_candidates,
    validate_latency_model,
)
from tests.conftest import image_split as _split

PARAMS = MaskSearchParams(
    validation_subset=100,
    adaptive_bn_images=64,
    random_masks=5,
    chosen_members=3,
    member_budgets=None,
    checkpoint_dir=None,
    search={"pop_size": 8, "generations": 3, "max_accuracy_drop": 0.9},
    roulette_branch={"branch_size": 4, "max_levels": 2},
)


LATENCY = LatencyProfileParams(batch_size=4, repeats=1, grid_points=2, calibration_masks=2, validation_masks=3)
OPERATING_POINT = {"threshold": 0.9, "criterion": "max_softmax"}


def _timing_free(latency: LatencyModel) -> LatencyModel:
    """The same key and layers, with ms = kept in x kept out: fronts that do not depend on timing noise."""
    tables = tuple(replace(t, ms=np.outer(t.in_units, t.out_units).astype(float)) for t in latency.tables)
    return replace(latency, tables=tables, intercept_ms=0.0, slope=1.0)


@pytest.fixture(scope="module")
def searched():
    torch.manual_seed(0)
    model = attach_exits(build_model({"name": "vgg", "stages": [[8], [8]], "fc_features": [16]}), [1])
    layout = build_layout(model.eval(), (1, 28, 28))
    latency = _timing_free(profile_latency(model, layout, LATENCY.settings(1), torch.device("cpu")))
    outcome = search_masks(
        model, _split(64, 0), _split(150, 1), OPERATING_POINT, latency, LATENCY, PARAMS, seed=0, device="cpu"
    )
    return model, outcome


def test_tables_agree_with_the_search(searched):
    model, outcome = searched
    pareto, history, random, per_generation, summary = tabulate_search(outcome)
    assert len(pareto) == len(outcome.result.front_X) and pareto["flops_ratio"].is_monotonic_increasing
    assert len(history) == outcome.evaluations and set(history["generation"]) == {1, 2, 3}
    assert len(random) == 5 and summary["evaluations"]["value"] == outcome.evaluations
    assert [p["step"] for p in per_generation["hypervolume"]] == [1, 2, 3]
    bits = decode_masks(pareto["mask"])
    np.testing.assert_array_equal(
        bits, outcome.result.front_X[np.argsort(outcome.layout.cost(outcome.result.front_X)["flops"], kind="stable")]
    )
    assert (pareto["units_kept"] == bits.sum(1)).all()
    kept = pareto[[kept_column(g.name) for g in outcome.layout.groups]].to_numpy()  # one column per group, in order
    np.testing.assert_array_equal(kept, [outcome.layout.units_kept(b) for b in bits])


def test_the_roulette_path_table_is_the_branch_path_dense_first(searched):
    _, outcome = searched
    path = tabulate_roulette_path(outcome)
    np.testing.assert_array_equal(decode_masks(path["mask"]), outcome.roulette["path_X"])
    assert path["level"].tolist() == list(range(len(path))) and path["flops_ratio"].iloc[0] == 1.0
    assert path["flops_ratio"].is_monotonic_decreasing
    np.testing.assert_allclose(path["val_accuracy"], outcome.roulette["path_accuracy"])
    empty = tabulate_roulette_path(replace(outcome, roulette=None))
    assert empty.empty and "mask" in empty.columns


def test_members_are_spread_and_round_trip_to_the_same_pruned_network(searched, tmp_path):
    model, outcome = searched
    pareto = tabulate_search(outcome)[0]
    chosen = choose_members(pareto, PARAMS)
    assert 1 <= len(chosen) <= 3 and chosen["flops_ratio"].iloc[0] == pareto["flops_ratio"].min()
    path = tmp_path / "members.csv"  # through CSV as the catalog does: bits keep their leading zeros
    chosen.to_csv(path, index=False)
    chosen = pd.read_csv(path, dtype={"mask": str})
    ds = PrunedMembersDataset(filepath=str(tmp_path / "members.pt"))
    ds.save(export_members(model, chosen))
    loaded = ds.load()
    assert loaded["member_ids"] == chosen["member"].tolist()
    layout = build_layout(loaded["model"], (1, 28, 28))
    x = torch.randn(4, 1, 28, 28)
    for mask in loaded["masks"]:
        pruned = prune_physically(loaded["model"].eval(), layout, mask, (1, 28, 28))
        with torch.no_grad(), population_masks(model.eval(), layout, torch.as_tensor(mask[None])):
            masked = as_exit_list(model(x))
        with torch.no_grad():
            for a, b in zip(as_exit_list(pruned(x)), masked, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert isinstance(
        plot_pareto_front(pareto, tabulate_search(outcome)[1], tabulate_search(outcome)[2], chosen, outcome, PARAMS),
        Figure,
    )


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"search": {"pop_size": 2}}, "pop_size"),
        ({"search": {"objectives": ["speed"]}}, "objectives"),
        ({"search": {"algorithm": "cmaes"}}, "algorithm"),
        ({"search": {"max_accuracy_drop": 0}}, "max_accuracy_drop"),
        ({"validation_subset": 0}, "validation_subset"),
        ({"budget_axis": "params_ratio"}, "budget_axis"),
        ({"distributed": {"scheduler": "local", "workers": 0}}, "workers"),
    ],
)
def test_bad_mask_search_params_name_the_key(override, key):
    with pytest.raises(ValidationError, match=key):
        MaskSearchParams(**override)


def test_the_front_carries_predicted_latency_and_the_latency_model_is_validated(searched):
    model, outcome = searched
    pareto = tabulate_search(outcome)[0]
    assert np.allclose(pareto["latency_ratio"], outcome.latency.ratio(outcome.layout, decode_masks(pareto["mask"])))
    chosen = choose_members(pareto, PARAMS)
    table, figure, metrics = validate_latency_model(model, outcome.latency, chosen, LATENCY, PARAMS, "cpu")
    assert table["kind"].tolist() == ["member"] * len(chosen) + ["random"] * LATENCY.validation_masks
    assert np.allclose(table["ratio_error"], table["predicted_ratio"] / table["measured_ratio"] - 1)
    assert np.allclose(table["predicted_ratio"].iloc[: len(chosen)], chosen["latency_ratio"])
    share = float(np.mean(np.abs(table["ratio_error"]) <= 0.10))
    assert metrics["within_10pct"]["value"] == pytest.approx(share) and "ms_median_abs_error" in metrics
    assert isinstance(figure, Figure)


def test_a_latency_search_chooses_members_and_draws_the_front_on_predicted_latency(searched):
    model, outcome = searched
    params = PARAMS.model_copy(
        update={"search": PARAMS.search.model_copy(update={"objectives": ["error", "latency_ratio"]})}
    )
    params = params.model_copy(update={"member_budgets": [0.6, 0.9], "candidates_per_budget": 1})
    found = search_masks(
        model, _split(64, 0), _split(150, 1), OPERATING_POINT, outcome.latency, LATENCY, params, 0, "cpu"
    )
    pareto, history, random, _, _ = tabulate_search(found)
    assert np.allclose(pareto["latency_ratio"], found.result.front_F[np.argsort(found.result.front_F[:, 1]), 1])
    assert pareto["latency_ratio"].is_monotonic_increasing and pareto["latency_ratio"].min() < 1.0
    chosen = choose_members(pareto, params)
    assert params.cost_axis() == "latency_ratio" and (chosen["latency_ratio"] <= chosen["budget"]).all()
    assert isinstance(plot_pareto_front(pareto, history, random, chosen, found, params), Figure)
    flops_axis = params.model_copy(update={"budget_axis": "flops_ratio"})
    assert (choose_members(pareto, flops_axis)["flops_ratio"] <= choose_members(pareto, flops_axis)["budget"]).all()


def test_a_speed_constrained_search_tabulates_a_front_of_fast_members_and_flags_slow_candidates(searched):
    model, outcome = searched
    share = outcome.layout.flops_ratio(outcome.result.evaluated_X) / outcome.latency.ratio(
        outcome.layout, outcome.result.evaluated_X
    )
    limit = float(np.quantile(share, 0.5))  # half the unconstrained search's candidates would fail it
    params = PARAMS.model_copy(update={"search": PARAMS.search.model_copy(update={"min_speedup_share": limit})})
    found = search_masks(
        model, _split(64, 0), _split(150, 1), OPERATING_POINT, outcome.latency, LATENCY, params, 0, "cpu"
    )
    pareto, history, *_ = tabulate_search(found)
    assert len(pareto) and (pareto["flops_ratio"] / pareto["latency_ratio"] >= limit - 1e-12).all()
    fast = history["flops_ratio"] / history["latency_ratio"] >= limit - 1e-12
    assert (~fast).any() and not history.loc[~fast, "feasible"].any()  # slow candidates are infeasible however accurate
    assert history.loc[history["feasible"], "mask"].isin(history.loc[fast, "mask"]).all()


def test_a_flops_ceiling_makes_every_candidate_above_it_infeasible(searched):
    model, outcome = searched
    ceiling = float(np.quantile(outcome.layout.flops_ratio(outcome.result.evaluated_X), 0.5))
    params = PARAMS.model_copy(update={"search": PARAMS.search.model_copy(update={"max_flops_ratio": ceiling})})
    found = search_masks(
        model, _split(64, 0), _split(150, 1), OPERATING_POINT, outcome.latency, LATENCY, params, 0, "cpu"
    )
    pareto, history, *_ = tabulate_search(found)
    assert len(pareto) and (pareto["flops_ratio"] <= ceiling + 1e-12).all()
    above = history["flops_ratio"] > ceiling + 1e-12
    assert above.any() and not history.loc[above, "feasible"].any()  # the dense mask, at least, is above it
    assert history.loc[~above, "feasible"].any()


def test_a_latency_model_of_other_settings_is_refused_before_searching(searched):
    model, outcome = searched
    other = LATENCY.model_copy(update={"batch_size": 8})
    with pytest.raises(LatencyKeyError, match=r"batch_size: tables '4' vs now '8'.*profile the model again"):
        search_masks(model, _split(64, 0), _split(150, 1), OPERATING_POINT, outcome.latency, other, PARAMS, 0, "cpu")


def test_a_network_without_tables_searches_on_flops_and_says_why_it_cannot_search_on_latency(searched):
    model, outcome = searched
    none = LatencyModel.without_tables(outcome.latency.key, "a model with an LSTM is not covered yet")
    found = search_masks(model, _split(64, 0), _split(150, 1), OPERATING_POINT, none, LATENCY, PARAMS, 0, "cpu")
    assert found.latency is None and "latency_ratio" not in tabulate_search(found)[0].columns
    table, _, metrics = validate_latency_model(model, none, tabulate_search(found)[0], LATENCY, PARAMS, "cpu")
    assert table.empty and metrics == {}
    latency_search = PARAMS.model_copy(
        update={"search": PARAMS.search.model_copy(update={"objectives": ["error", "latency_ratio"]})}
    )
    with pytest.raises(ValueError, match="needs latency tables: a model with an LSTM"):
        search_masks(model, _split(64, 0), _split(150, 1), OPERATING_POINT, none, LATENCY, latency_search, 0, "cpu")
    speed_rule = PARAMS.model_copy(update={"member_budgets": [0.5], "min_speedup_share": 0.7})
    with pytest.raises(ValueError, match="min_speedup_share needs latency tables: a model with an LSTM"):
        search_masks(model, _split(64, 0), _split(150, 1), OPERATING_POINT, none, LATENCY, speed_rule, 0, "cpu")


def test_members_are_chosen_where_they_obey_the_cap_the_baselines_obey():
    with pytest.raises(ValidationError, match=r"uncapped_below \(0.25\) lies above the tightest of member_budgets"):
        MaskSearchParams(member_budgets=[0.5, 0.25], search={"max_pruning_ratio": 0.7, "uncapped_below": 0.25})
    params = MaskSearchParams(member_budgets=[0.5, 0.25], candidates_per_budget=2, search={"uncapped_below": 0.2})
    front = pd.DataFrame(  # the sparser, the better before fine-tuning: uncapped members would win every budget
        {
            "member": range(6),
            "flops_ratio": [0.08, 0.15, 0.21, 0.24, 0.4, 0.5],
            "exit2_accuracy": np.linspace(1, 0.5, 6),
        }
    )
    chosen = choose_members(front, params)
    assert chosen["member"].tolist() == [2, 3, 4, 5] and chosen["budget"].tolist() == [0.25, 0.25, 0.5, 0.5]
    free = choose_members(
        front, params.model_copy(update={"search": params.search.model_copy(update={"uncapped_below": 0})})
    )
    assert free["member"].tolist() == [0, 1, 2, 3]


def test_min_speedup_share_keeps_only_members_whose_flops_cut_is_a_speedup():
    params = MaskSearchParams(member_budgets=[0.4], candidates_per_budget=2, min_speedup_share=0.7)
    front = pd.DataFrame(  # the most accurate members are slow for their FLOPs: the rule must pass them over
        {
            "member": range(5),
            "flops_ratio": [0.30, 0.35, 0.38, 0.39, 0.45],
            "latency_ratio": [0.55, 0.56, 0.53, 0.54, 0.60],
            "exit2_accuracy": [0.95, 0.94, 0.90, 0.89, 0.99],
        }
    )
    shares = front["flops_ratio"] / front["latency_ratio"]  # 0.545, 0.625, 0.717, 0.722, 0.75
    chosen = choose_members(front, params)
    assert chosen["member"].tolist() == [2, 3]
    assert (chosen["flops_ratio"] / chosen["latency_ratio"] >= 0.7).all() and (shares.iloc[:2] < 0.7).all()
    without = choose_members(front, params.model_copy(update={"min_speedup_share": None}))
    assert without["member"].tolist() == [0, 1]
    two_budgets = params.model_copy(update={"member_budgets": [0.36, 0.4], "candidates_per_budget": 1})
    assert choose_members(front, two_budgets)["member"].tolist() == [2]  # 0.36 has no fast member: skipped
    with pytest.raises(ValueError, match=r"no Pareto member fits any of member_budgets \[0.4\].*best predicted "
                       r"speed-up share is 0.722. Loosen member_budgets or min_speedup_share"):  # fmt: skip
        choose_members(front, params.model_copy(update={"min_speedup_share": 0.9}))  # never a slow member instead
    tight = params.model_copy(update={"member_budgets": [0.25], "min_speedup_share": None})
    with pytest.raises(ValueError, match=r"fits any of member_budgets \[0.25\].*spans 0.300-0.450 of flops_ratio"):
        choose_members(front, tight)
    with pytest.raises(ValueError, match="min_speedup_share needs the latency model's predicted latency_ratio"):
        choose_members(front.drop(columns="latency_ratio"), params)
    with pytest.raises(ValueError, match=r"the search kept no feasible candidate.*Loosen search.max_accuracy_drop"):
        choose_members(front.iloc[:0], params)  # not "the front spans nan-nan"


def test_a_measured_speed_rule_judges_the_timed_latency_not_the_prediction():
    params = MaskSearchParams(
        member_budgets=[0.4], candidates_per_budget=2, min_speedup_share=0.7, speedup_share_from="measured"
    )
    front = pd.DataFrame(  # members 2 and 3 are predicted fast but run slow; member 1 the other way round
        {
            "member": range(5),
            "flops_ratio": [0.30, 0.35, 0.38, 0.39, 0.45],
            "latency_ratio": [0.55, 0.56, 0.53, 0.54, 0.60],
            "measured_latency_ratio": [0.50, 0.48, 0.60, 0.58, np.nan],  # 0.600, 0.729, 0.633, 0.672; not timed
            "exit2_accuracy": [0.95, 0.94, 0.90, 0.89, 0.99],
        }
    )
    assert choose_members(front.drop(columns="measured_latency_ratio"), params)["member"].tolist() == [2, 3]
    chosen = choose_members(front, params)
    assert chosen["member"].tolist() == [1]  # the only one measured >= 0.7; a slow one never fills the second place
    assert choose_members(front.drop(columns="latency_ratio"), params)["member"].tolist() == [1]  # no tables needed
    with pytest.raises(ValueError, match=r"best measured speed-up share is 0.729"):
        choose_members(front, params.model_copy(update={"min_speedup_share": 0.8}))
    with pytest.raises(
        ValidationError, match="speedup_share_from: measured times the candidates for min_speedup_share"
    ):
        MaskSearchParams(member_budgets=[0.4], speedup_share_from="measured")


def test_front_candidates_are_timed_on_this_machine_and_the_rule_keeps_the_fast_ones(searched):
    model, outcome = searched
    history = tabulate_search(outcome)[1]  # six evaluated candidates stand in for the tiny search's 1-member front
    pareto = history.drop_duplicates("mask").head(6).assign(member=range(6)).reset_index(drop=True)
    budget = float(pareto["flops_ratio"].quantile(0.75))
    params = PARAMS.model_copy(
        update={"member_budgets": [budget], "candidates_per_budget": 8, "min_speedup_share": 1e-3}
    )
    assert time_front_candidates(pareto, model, LATENCY, params, "cpu") is pareto  # predicted: nothing timed
    measured = params.model_copy(update={"speedup_share_from": "measured"})
    timed = time_front_candidates(pareto, model, LATENCY, measured, "cpu")
    could_be = pareto["flops_ratio"] <= budget
    assert could_be.sum() >= 2 and timed["measured_latency_ratio"].notna().eq(could_be).all()
    assert (timed.loc[could_be, "measured_latency_ratio"] > 0).all()
    assert timed.drop(columns="measured_latency_ratio").equals(pareto)
    share = timed["flops_ratio"] / timed["measured_latency_ratio"]
    limit = float(share[could_be].median())  # half of the possible candidates measure slower
    chosen = choose_members(timed, measured.model_copy(update={"min_speedup_share": limit}))
    assert set(chosen["member"]) == set(timed.loc[share >= limit, "member"]) and len(chosen) < could_be.sum()
    none = LatencyModel.without_tables(outcome.latency.key, "a model with an LSTM is not covered yet")
    found = search_masks(model, _split(64, 0), _split(150, 1), OPERATING_POINT, none, LATENCY, measured, 0, "cpu")
    assert found.latency is None  # the measured rule needs no tables


def test_min_speedup_share_without_budgets_is_refused():
    with pytest.raises(ValidationError, match="min_speedup_share .* set member_budgets"):
        MaskSearchParams(member_budgets=None, min_speedup_share=0.7)
    with pytest.raises(ValidationError, match="min_speedup_share"):
        MaskSearchParams(min_speedup_share=0)
