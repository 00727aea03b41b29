import numpy as np
import pytest
import torch
from torch import nn

from evoprune.core.comparison import (
    MeasuredModel,
    early_exit_policy,
    finetune_with_variant,
    member_budgets,
    member_row,
    unpack_members,
)
from evoprune.core.exits import attach_exits
from evoprune.core.finetune_config import FinetuneParams
from evoprune.core.models import build_model
from evoprune.core.units import build_layout


@pytest.fixture(scope="module")
def layout():
    torch.manual_seed(0)
    return build_layout(attach_exits(build_model({"name": "lenet5"}), [1]).eval(), (1, 28, 28))


def test_member_budgets_cap_a_predicted_latency_above_the_dense_networks_at_one(layout):
    masks = np.ones((2, layout.num_bits), dtype=bool)
    masks[0, :3] = False
    predicted = np.array([0.6, 1.3])  # a noisy latency model may predict a member slower than dense
    flops, budgets, latency = member_budgets(layout, masks, lambda m: predicted[: len(m)], "latency_ratio")
    assert np.allclose(flops, layout.flops_ratio(masks)) and flops[0] < 1.0 == flops[1]
    assert budgets.tolist() == [0.6, 1.0] and latency.tolist() == [0.6, 1.3]  # labels keep the prediction
    flops, budgets, latency = member_budgets(layout, masks, layout.flops_ratio, "flops_ratio")
    assert np.array_equal(budgets, flops) and latency is None


def test_member_row_adds_ratios_against_the_dense_model(layout):
    dense = {"exit1.test_accuracy": 0.8, "exit2.test_accuracy": 0.9, "flops": 200.0, "params": 50.0}
    measured = {"exit1.test_accuracy": 0.7, "exit2.test_accuracy": 0.85, "flops": 50.0, "params": 20.0}
    measured["speedup_batch1"] = 2.0
    mask = np.ones(layout.num_bits, bool)
    first = layout.groups[0]
    mask[first.offset : first.offset + 2] = False
    row = member_row(measured, dense, mask, layout)
    assert (row["flops_ratio"], row["params_ratio"]) == (0.25, 0.4)
    assert row["test_accuracy"] == 0.85 and row["accuracy_drop_pt"] == pytest.approx(5.0)
    assert row[f"kept.{first.name}"] == first.size - 2 and row["units_kept"] == layout.num_bits - 2
    assert row["speedup_per_flops_reduction_batch1"] == pytest.approx(0.5)  # 2x faster at 4x fewer FLOPs


def test_scalars_are_the_rows_numbers_except_the_member_id():
    row = {"variant": "keep", "member": 3, "flops_ratio": 0.5, "units_kept": 7, "note": "x"}
    measured = MeasuredModel({"variant": "keep", "member": 3}, row, {}, nn.Identity())
    assert measured.scalars == {"flops_ratio": 0.5, "units_kept": 7} and measured.member == 3


def test_members_and_policy_are_unpacked_from_the_catalog_formats():
    model = nn.Identity()
    trained, masks, ids = unpack_members({"model": model, "masks": [[1, 0], [0, 1]], "member_ids": np.array([4, 9])})
    assert trained is model and masks.dtype == bool and masks.shape == (2, 2) and ids == [4, 9]
    assert all(type(i) is int for i in ids)
    assert early_exit_policy({"threshold": "0.9", "criterion": "entropy", "test_accuracy": 0.8}) == (0.9, "entropy")


def test_no_members_means_no_work():
    out = finetune_with_variant(
        nn.Identity(), nn.Identity(), np.zeros((0, 3), bool), [], "keep", ({}, {}, {}), (1.0, "max_softmax"), {},
        FinetuneParams(), 0, torch.device("cpu"),
    )  # fmt: skip
    assert out == []
