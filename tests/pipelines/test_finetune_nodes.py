"""finetune's select_members and mask_search's candidates per budget, called as plain functions."""

import numpy as np
import pandas as pd
import pytest
import torch

from evoprune.core.baselines import refit_within_budget
from evoprune.core.finetune import ReusableFinetunes, finetune_member, finetune_settings
from evoprune.core.importance import GroupL1
from evoprune.core.models import build_model
from evoprune.core.models.adapter import input_shape
from evoprune.core.report_table import ReportParams
from evoprune.core.search.members import final_network_groups
from evoprune.core.selection import REFIT_ID_OFFSET, layer_type_bits
from evoprune.core.units import build_layout
from evoprune.datasets import FinetunedMembersDataset
from evoprune.pipelines.finetune.nodes import FinetuneParams, finetune_variant, measure_dense, select_members
from evoprune.pipelines.mask_search.nodes import MaskSearchParams, choose_members
from tests.conftest import image_split, tiny_multi_exit

CPU = torch.device("cpu")


def _front(flops: list[float], accuracy: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        {"member": range(len(flops)), "flops_ratio": flops, "exit1_accuracy": 0.5, "exit2_accuracy": accuracy}
    )


def test_candidates_per_budget_are_the_most_accurate_and_not_shared():
    front = _front([0.1, 0.2, 0.24, 0.3, 0.34, 0.45, 0.6], [0.50, 0.60, 0.62, 0.70, 0.71, 0.80, 0.90])
    params = MaskSearchParams(member_budgets=[0.5, 0.25, 0.35], candidates_per_budget=2)
    chosen = choose_members(front, params)
    # 0.25 takes its best two (0.24, 0.2); 0.35 the best two not taken (0.34, 0.3); 0.5: 0.45 is left, and 0.1
    # lies below search.uncapped_below (0.2), where members may break the per-layer cap the baselines obey
    assert dict(zip(chosen["member"], chosen["budget"], strict=True)) == {
        1: 0.25,
        2: 0.25,
        3: 0.35,
        4: 0.35,
        5: 0.5,
    }
    assert chosen["flops_ratio"].is_monotonic_increasing
    assert (chosen["flops_ratio"] <= chosen["budget"]).all()
    one = choose_members(front, MaskSearchParams(member_budgets=[0.5, 0.25, 0.35], candidates_per_budget=1))
    assert one["member"].tolist() == [2, 4, 5]  # one member per budget, the most accurate
    spread = choose_members(front, MaskSearchParams(member_budgets=None, chosen_members=3))
    assert spread["budget"].isna().all() and len(spread) == 3


def test_a_twin_of_a_better_candidate_gives_its_place_to_the_next_distinct_member():
    # members 2 and 3: same FLOPs and final-exit accuracy (masks apart only in an early exit's head), 3 ranking
    # second on the final exit; member 1 is the next distinct one
    front = _front([0.30, 0.36, 0.38, 0.38], [0.60, 0.64, 0.70, 0.70]).assign(exit1_accuracy=[0.5, 0.5, 0.6, 0.55])
    params = MaskSearchParams(member_budgets=[0.4], candidates_per_budget=2)
    assert choose_members(front, params)["member"].tolist() == [1, 2]
    apart = front.assign(exit2_accuracy=[0.60, 0.64, 0.70, 0.69])  # differ on the final exit: not twins
    assert choose_members(apart, params)["member"].tolist() == [2, 3]


def test_candidates_keeping_one_allocation_of_the_final_exits_network_are_twins():
    """The contest's fine-tunes go to different allocations: masks apart only in which units of a layer they keep
    or in the early exit's head are one candidate (the better), whatever their FLOPs and accuracy."""
    model, _ = tiny_multi_exit()
    layout = build_layout(model, input_shape(model))
    groups = final_network_groups(model, layout)
    assert groups == ("backbone.stages.0.0", "backbone.stages.1.0", "backbone.head.1")  # not exit_heads.0.2
    lstm = build_model({"name": "lstm_seq", "hidden_size": 8})
    lstm_layout = build_layout(lstm, input_shape(lstm))
    assert final_network_groups(lstm, lstm_layout) == tuple(g.name for g in lstm_layout.groups)  # one exit: all
    front = _front([0.30, 0.36, 0.37, 0.38], [0.60, 0.64, 0.69, 0.70]).assign(
        **{
            "kept.backbone.stages.0.0": [4, 6, 4, 4],
            "kept.backbone.stages.1.0": [8, 8, 8, 8],
            "kept.backbone.head.1": [8, 8, 8, 8],
            "kept.exit_heads.0.2": [32, 32, 16, 48],  # 2 and 3: one final network, apart in the early head
        }
    )
    params = MaskSearchParams(member_budgets=[0.4], candidates_per_budget=2)
    assert choose_members(front, params, model)["member"].tolist() == [1, 3]  # 2, then 0: twins of 3
    assert choose_members(front, params)["member"].tolist() == [2, 3]  # allocation unknown: FLOPs and accuracy
    partial = front.drop(columns="kept.backbone.head.1")  # never judged on part of the allocation
    assert choose_members(partial, params, model)["member"].tolist() == [2, 3]
    three = MaskSearchParams(member_budgets=[0.4], candidates_per_budget=3)
    assert choose_members(front, three, model)["member"].tolist() == [1, 3]  # no third allocation within 0.4
    widened = front.assign(**{"kept.backbone.head.1": [8, 8, 16, 8]})  # 2 now keeps more of the last hidden layer
    assert choose_members(widened, three, model)["member"].tolist() == [1, 2, 3]


@pytest.fixture(scope="module")
def candidates():
    trained, initial = tiny_multi_exit()
    layout = build_layout(trained, (1, 28, 28))
    rng = np.random.default_rng(0)
    masks = layout.repair(rng.random((3, layout.num_bits)) < 0.6)
    flops = layout.flops_ratio(masks)
    chosen = pd.DataFrame(
        {
            "member": [7, 8, 9],
            "flops_ratio": flops,
            "exit1_accuracy": 0.3,
            "exit2_accuracy": [0.40, 0.35, 0.20],
            "budget": [0.9, 0.9, np.nan],  # 7 and 8 compete; 9 has no budget and is kept untried
        }
    )
    pareto_members = {"model": trained, "masks": masks, "member_ids": [7, 8, 9]}
    return pareto_members, chosen, initial.eval(), layout


def test_select_members_keeps_the_best_after_finetuning_on_validation_data(candidates):
    pareto_members, chosen, initial, layout = candidates
    train, validation = image_split(120, 0), image_split(80, 1)
    params = FinetuneParams(training={"epochs": 1, "batch_size": 40})
    selected, table, metrics, _ = select_members(
        pareto_members, chosen, initial, train, validation, params, seed=3, device="cpu"
    )
    after = {}
    for i, member in enumerate([7, 8]):  # the same fine-tune, redone here: the node's figures are reproducible
        _, history = finetune_member(
            pareto_members["model"],
            initial,
            layout,
            pareto_members["masks"][i],
            "keep",
            train,
            validation,
            params.training,
            CPU,
            3,
        )
        after[member] = history["val_accuracy"][-1]
    rows = table.set_index("member")
    assert rows.loc[[7, 8], "val_accuracy_after_finetune"].to_dict() == pytest.approx(after)
    assert np.isnan(rows.loc[9, "val_accuracy_after_finetune"])
    best = max(after, key=lambda m: (after[m], -rows.loc[m, "flops_ratio"]))
    assert rows["selected"].to_dict() == {7: best == 7, 8: best == 8, 9: True}
    assert selected["member_ids"] == sorted([best, 9])
    index = [7, 8, 9].index(best)
    assert np.array_equal(selected["masks"][0], pareto_members["masks"][index])
    assert metrics["candidates_finetuned"]["value"] == 2
    assert set(metrics) == {
        "candidates_finetuned",
        "member7.val_accuracy_after_finetune",
        "member8.val_accuracy_after_finetune",
    }


def test_selection_seeds_judge_each_candidate_on_its_mean_over_seeds(candidates):
    pareto_members, chosen, initial, layout = candidates
    train, validation = image_split(120, 0), image_split(80, 1)
    params = FinetuneParams(training={"epochs": 2, "batch_size": 20, "learning_rate": 0.02}, selection_seeds=2)
    selected, table, metrics, finetunes = select_members(
        pareto_members, chosen, initial, train, validation, params, seed=3, device="cpu"
    )
    after = {}  # member -> its validation accuracy at seeds 3 and 4, fine-tuned again here
    for i, member in enumerate([7, 8]):
        after[member] = [
            finetune_member(
                pareto_members["model"], initial, layout, pareto_members["masks"][i], "keep", train, validation,
                params.training, CPU, s,
            )[1]["val_accuracy"][-1]
            for s in (3, 4)
        ]  # fmt: skip
    assert any(a != b for a, b in after.values())  # the seeds differ, so the mean is not one seed's figure
    rows = table.set_index("member")
    assert rows.loc[[7, 8], "val_accuracy_after_finetune"].to_dict() == pytest.approx(
        {m: np.mean(a) for m, a in after.items()}
    )
    assert rows.loc[[7, 8], "val_accuracy_after_finetune_std"].to_dict() == pytest.approx(
        {m: np.std(a, ddof=1) for m, a in after.items()}
    )
    best = max(after, key=lambda m: (np.mean(after[m]), -rows.loc[m, "flops_ratio"]))
    assert selected["member_ids"] == sorted([best, 9]) and metrics["candidates_finetuned"]["value"] == 2
    assert finetunes["member_ids"] == [best]  # handed on: the run's seed's fine-tune, which finetune would repeat
    assert finetunes["histories"][0]["val_accuracy"][-1] == pytest.approx(after[best][0])


def test_refit_round_meets_every_winner_with_its_linear_units_chosen_by_l1(candidates):
    pareto_members, chosen, initial, layout = candidates
    train, validation = image_split(120, 0), image_split(80, 1)
    plain = FinetuneParams(training={"epochs": 1, "batch_size": 40})
    refit = plain.model_copy(update={"selection_refit": "linear_l1"})
    search = MaskSearchParams(search={"max_pruning_ratio": 0.9})
    args = (pareto_members, chosen, initial, train, validation)
    _, first_round, _, _ = select_members(*args, plain, seed=3, device="cpu", mask_search=search)
    selected, table, metrics, finetunes = select_members(*args, refit, seed=3, device="cpu", mask_search=search)
    rows = table.set_index("member")
    winners = first_round.loc[first_round["selected"], "member"].tolist()  # 7 or 8, and 9 (no budget)
    trained, masks, ids = pareto_members["model"], pareto_members["masks"], pareto_members["member_ids"]
    scores, fc = GroupL1((1, 28, 28))(trained, layout), layer_type_bits(trained, layout, torch.nn.Linear)
    refit_masks = {}
    for member in winners:
        mask = masks[ids.index(member)]
        refit_masks[REFIT_ID_OFFSET + member] = refit_within_budget(
            layout, mask, scores, fc, float(layout.flops_ratio(mask[None])[0]), 0.9
        )
    assert rows.loc[list(refit_masks), "refit_of"].tolist() == winners
    assert (rows.loc[rows["refit_of"] < 0].index == [7, 8, 9]).all()
    for member, mask in refit_masks.items():
        origin = rows.loc[member, "refit_of"]
        assert rows.loc[member, "flops_ratio"] == pytest.approx(layout.flops_ratio(mask[None])[0])
        assert rows.loc[member, "flops_ratio"] <= rows.loc[origin, "flops_ratio"] + 1e-12
        assert rows.loc[member, "budget"] == rows.loc[origin, "budget"] or np.isnan(rows.loc[origin, "budget"])
        pair = rows.loc[[origin, member], "val_accuracy_after_finetune"]
        assert pair.notna().all()  # both fine-tuned, member 9 too
        best = pair.idxmax() if pair.nunique() == 2 else rows.loc[[origin, member], "flops_ratio"].idxmin()
        assert rows.loc[best, "selected"] and not rows.loc[pair.index.drop(best)[0], "selected"]
        if best == member:
            assert np.array_equal(selected["masks"][selected["member_ids"].index(member)], mask)
    assert rows["selected"].sum() == 2 and sorted(selected["member_ids"]) == sorted(rows.index[rows["selected"]])
    assert metrics["candidates_finetuned"]["value"] == 5  # 7 and 8, the winner's refit, 9 and its refit
    assert f"member{REFIT_ID_OFFSET + 9}.val_accuracy_after_finetune" in metrics
    assert sorted(finetunes["member_ids"]) == sorted(selected["member_ids"])  # every winner was fine-tuned


def test_the_selection_variant_takes_select_members_fine_tunes_instead_of_repeating_them(candidates, tmp_path):
    pareto_members, chosen, initial, _ = candidates
    train, validation, test = image_split(120, 0), image_split(80, 1), image_split(60, 2)
    params = FinetuneParams(
        training={"epochs": 1, "batch_size": 40}, measurement={"latency_batch_sizes": [1], "latency_repeats": 1}
    )
    selected, table, _, finetunes = select_members(
        pareto_members, chosen, initial, train, validation, params, seed=3, device="cpu"
    )
    winner = int(table.loc[table["selected"] & table["val_accuracy_after_finetune"].notna(), "member"].iloc[0])
    assert finetunes["member_ids"] == [winner]  # member 9 was kept untried: nothing to reuse
    store = FinetunedMembersDataset(filepath=str(tmp_path / "selection_finetunes.pt"))
    store.save(finetunes)
    saved = store.load()
    assert saved["finetune_settings"] == finetunes["finetune_settings"]
    assert saved["histories"] == finetunes["histories"]
    policy = {"threshold": 0.9, "criterion": "max_softmax"}
    dense, _ = measure_dense(pareto_members, test, policy, params, "cpu")

    def run(variant: str, reusable: dict[str, object], seeds: int = 1):
        args = (initial, train, validation, test, policy, dense, params, 3, ReportParams(seeds=seeds), "cpu")
        return finetune_variant(selected, reusable, *args, variant=variant)[0].set_index(["member", "seed"])

    nothing = {**finetunes, "member_ids": [], "pruned": [], "histories": [], "masks": finetunes["masks"][:0]}
    reused, redone = run("keep", saved, seeds=2), run("keep", nothing, seeds=2)
    taken = saved["histories"][0]["train_seconds"]
    assert reused.loc[(winner, 3), "train_seconds"] == taken  # the selection's fine-tune, not a new one
    assert reused.loc[(winner, 4), "train_seconds"] != taken  # the second seed is fine-tuned
    accuracy = ["exit1.test_accuracy", "exit2.test_accuracy", "flops"]
    assert reused[accuracy].equals(redone[accuracy])  # and it is exactly what fine-tuning again gives
    assert run("rewind", saved).loc[(winner, 3), "train_seconds"] != taken  # other weights: fine-tuned


def test_fine_tune_settings_tell_apart_everything_that_changes_the_result():
    params = FinetuneParams()
    base = finetune_settings("keep", 3, params.training, None, CPU)
    assert base == finetune_settings("keep", 3, FinetuneParams().training, None, CPU)
    others = [
        finetune_settings("rewind", 3, params.training, None, CPU),
        finetune_settings("keep", 4, params.training, None, CPU),
        finetune_settings("keep", 3, params.training.model_copy(update={"epochs": 9}), None, CPU),
        finetune_settings("keep", 3, params.training, [0.0, 1.0], CPU),
        finetune_settings("keep", 3, params.training, None, torch.device("meta")),
        finetune_settings("keep", 3, params.training, None, CPU, threads=1),  # floats sum in another order
        finetune_settings("keep", 3, params.training, None, CPU, threads=2),
    ]
    assert len({base, *others}) == 8
    reusable = ReusableFinetunes(base, {5: (torch.nn.Identity(), {})})
    assert reusable.get(5, base) is not None
    assert all(reusable.get(5, s) is None for s in others) and reusable.get(6, base) is None
    assert ReusableFinetunes.from_members({"member_ids": [5], "pruned": [torch.nn.Identity()]}).get(5, base) is None
