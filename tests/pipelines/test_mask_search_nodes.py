import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from pydantic import ValidationError

from evoprune.core.exits import attach_exits
from evoprune.core.mask_codec import decode_masks
from evoprune.core.masking import population_masks, prune_physically
from evoprune.core.models import build_model
from evoprune.core.train import as_exit_list
from evoprune.core.units import build_layout
from evoprune.datasets import PrunedMembersDataset
from evoprune.pipelines.mask_search.nodes import (
    MaskSearchParams,
    choose_members,
    export_members,
    plot_pareto_front,
    search_masks,
    tabulate_search,
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


@pytest.fixture(scope="module")
def searched():
    torch.manual_seed(0)
    model = attach_exits(build_model({"name": "vgg", "stages": [[8], [8]], "fc_features": [16]}), [1])
    operating_point = {"threshold": 0.9, "criterion": "max_softmax"}
    outcome = search_masks(model, _split(64, 0), _split(150, 1), operating_point, PARAMS, seed=0, device="cpu")
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
        ({"search": {"objectives": ["error", "latency_ratio"]}}, "latency_ratio needs a latency model"),
        ({"distributed": {"scheduler": "local", "workers": 0}}, "workers"),
    ],
)
def test_bad_mask_search_params_name_the_key(override, key):
    with pytest.raises(ValidationError, match=key):
        MaskSearchParams(**override)
