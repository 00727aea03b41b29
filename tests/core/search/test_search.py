import numpy as np
import pandas as pd
import pytest
import torch
from pymoo.core.problem import Problem

from evoprune.core.baselines import mask_within_budget, random_allocations
from evoprune.core.importance import GroupL1, own_filter_l1
from evoprune.core.latency import LatencySettings, profile_latency
from evoprune.core.masking import SlicedEvaluator
from evoprune.core.models import build_model
from evoprune.core.search.api import search_pruning_masks
from evoprune.core.search.operators import (
    RouletteMutation,
    RouletteSampling,
    drop_probability,
    rank_within_layers,
)
from evoprune.core.search.problem import MaskSearchProblem, why_infeasible
from evoprune.core.search.roulette_branch import RouletteBranchConfig, path_levels_within, roulette_branch_search
from evoprune.core.search.run import SearchConfig, run_search
from evoprune.core.sparse.compare import seeded_search_comparison
from evoprune.core.train import TrainConfig, train
from evoprune.core.units import build_layout
from tests.conftest import image_split as _split

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = build_model({"name": "lenet5", "conv_channels": [6, 12], "fc_features": [24, 16]})
    train(
        model,
        _split(400, 0),
        None,
        TrainConfig(epochs=3, batch_size=32, optimizer="adamw", learning_rate=3e-3),
        CPU,
        seed=0,
    )
    layout = build_layout(model, (1, 28, 28))
    val = _split(150, 1)
    evaluator = SlicedEvaluator(model, layout, CPU)
    importance = own_filter_l1(model, layout)
    rank = rank_within_layers(importance, layout)
    reference = evaluator.accuracy(np.ones((1, layout.num_bits), bool), val)[0]
    problem = MaskSearchProblem(layout, lambda X: evaluator.accuracy(X, val), ["error", "flops_ratio"], reference, 0.5)
    return model, layout, evaluator, importance, rank, reference, problem, val


CFG = SearchConfig(pop_size=12, generations=6, checkpoint_every=1)


def test_rank_is_within_layer_and_drop_probability_falls_with_it(setup):
    _, layout, _, importance, rank, *_ = setup
    g = layout.groups[0]
    block = importance[g.offset : g.offset + g.size]
    assert rank[g.offset + int(block.argmin())] == 0.0 and rank[g.offset + int(block.argmax())] == 1.0
    p = drop_probability(np.array([0.0, 0.5, 1.0]), 0.8, floor=0.1)
    assert p[0] == pytest.approx(0.8) and p[2] == pytest.approx(0.08) and p[0] > p[1] > p[2] > 0


def test_roulette_sampling_starts_dense_and_prunes_small_units_more(setup):
    _, layout, _, _, rank, *_ = setup
    problem = Problem(n_var=layout.num_bits, xl=0, xu=1, vtype=bool)
    X = RouletteSampling(rank, floor=0.1).do(problem, 200, random_state=np.random.default_rng(0)).get("X")
    assert X[0].all()
    kept = X[1:].mean(0)
    small, large = rank < 0.2, rank > 0.8
    assert kept[small].mean() < kept[large].mean()  # likely, not certainly, pruned
    assert 0 < kept[small].mean() and kept[large].mean() < 1


def test_seed_masks_join_the_first_population_and_the_front_is_never_worse_than_them(setup):
    model, layout, _, importance, rank, _, problem, _ = setup
    scores = GroupL1((1, 28, 28))(model, layout)
    seeds = np.stack([mask_within_budget(layout, scores, b) for b in (0.3, 0.6)])
    problem_ = Problem(n_var=layout.num_bits, xl=0, xu=1, vtype=bool)
    X = RouletteSampling(rank, seeds=seeds).do(problem_, 10, random_state=np.random.default_rng(0)).get("X")
    assert X[0].all() and np.array_equal(X[1:3], seeds) and len(X) == 10
    result = run_search(problem, CFG, rank, importance, seed=0, seeds=seeds)
    seed_F = problem.evaluate(seeds, return_values_of=["F"])
    for f in seed_F:  # every seed is matched or dominated by a front member (elitism keeps the best)
        assert (result.front_F <= f + 1e-12).all(axis=1).any()


def test_roulette_mutation_is_driven_by_the_given_generator(setup):
    _, layout, _, _, rank, *_ = setup
    problem = Problem(n_var=layout.num_bits, xl=0, xu=1, vtype=bool)
    X = np.ones((50, layout.num_bits), dtype=bool)
    mutation = RouletteMutation(rank, rate=0.05)
    a = mutation._do(problem, X, random_state=np.random.default_rng(1))
    b = mutation._do(problem, X, random_state=np.random.default_rng(1))
    assert np.array_equal(a, b) and not a.all()
    assert (~a)[:, rank < 0.2].mean() > (~a)[:, rank > 0.8].mean()


def test_problem_outputs_and_constraint(setup):
    *_, reference, problem, val = setup
    out = problem.evaluate(
        np.ones((2, problem.n_var), bool), return_values_of=["F", "G", "accuracy"], return_as_dictionary=True
    )
    assert out["F"].shape == (2, 2) and out["F"][0, 1] == pytest.approx(1.0)
    assert out["G"][0, 0] == pytest.approx(-0.5)  # no drop: 0.5 below the limit
    with pytest.raises(ValueError, match="unknown objectives"):
        MaskSearchProblem(problem.layout, problem.score, ["speed"], reference, 0.1)


def test_same_seed_same_front_and_different_seed_differs(setup):
    importance, rank, problem = setup[3], setup[4], setup[6]
    a = run_search(problem, CFG, rank, importance, seed=3)
    b = run_search(problem, CFG, rank, importance, seed=3)
    c = run_search(problem, CFG, rank, importance, seed=4)
    assert np.array_equal(a.front_X, b.front_X) and np.array_equal(a.front_F, b.front_F)
    assert a.generations == b.generations
    assert not np.array_equal(a.evaluated_X, c.evaluated_X)


def test_kill_and_resume_ends_with_the_same_front(setup, tmp_path):
    importance, rank, _, problem = setup[3], setup[4], setup[5], setup[6]
    uninterrupted = run_search(problem, CFG, rank, importance, seed=5)
    killed = run_search(problem, CFG, rank, importance, seed=5, checkpoint_dir=tmp_path, stop_after=3)
    assert len(killed.generations) == 3
    resumed = run_search(problem, CFG, rank, importance, seed=5, checkpoint_dir=tmp_path)
    assert np.array_equal(resumed.front_X, uninterrupted.front_X)
    assert np.array_equal(resumed.front_F, uninterrupted.front_F)
    assert np.array_equal(resumed.evaluated_X, uninterrupted.evaluated_X)
    assert resumed.generations == uninterrupted.generations
    again = run_search(problem, CFG, rank, importance, seed=5, checkpoint_dir=tmp_path)  # a finished search
    assert np.array_equal(again.front_X, uninterrupted.front_X) and len(again.evaluated_X) == len(
        uninterrupted.evaluated_X
    )


def test_nsga2_front_dominates_random_masks_of_equal_flops(setup):
    _, layout, evaluator, importance, rank, _, problem, val = setup
    result = run_search(problem, SearchConfig(pop_size=20, generations=10), rank, importance, seed=0)
    rng = np.random.default_rng(0)
    random = layout.repair(rng.random((40, layout.num_bits)) < rng.uniform(0.3, 1.0, (40, 1)))
    random_flops = layout.flops_ratio(random)
    random_error = 1 - evaluator.accuracy(random, val)[:, -1]
    front_error, front_flops = result.front_F[:, 0], result.front_F[:, 1]
    beaten = 0
    for f, e in zip(random_flops, random_error, strict=True):
        cheaper = front_flops <= f
        if cheaper.any():
            best = front_error[cheaper].min()
            assert best <= e + 1e-12, f"a random mask at {f:.2f} FLOPs beats the front"
            beaten += best < e
    assert beaten >= len(random) // 2


def test_ga_optimises_one_objective_under_the_constraint(setup):
    importance, rank, problem = setup[3], setup[4], setup[6]
    single = MaskSearchProblem(problem.layout, problem.score, ["flops_ratio"], problem.reference_accuracy, 0.2)
    result = run_search(single, SearchConfig(algorithm="ga", pop_size=12, generations=5), rank, importance, seed=0)
    assert result.front_F.shape[1] == 1 and result.front_F[0, 0] < 1.0
    assert problem.reference_accuracy[-1] - result.front_accuracy[0, -1] <= 0.2 + 1e-12


def test_roulette_branch_prunes_monotonically_within_the_limit(setup):
    _, layout, evaluator, importance, rank, reference, _, val = setup
    out = roulette_branch_search(
        layout,
        lambda X: evaluator.accuracy(X, val),
        rank,
        importance,
        float(reference[-1]),
        0.2,
        0.1,
        RouletteBranchConfig(branch_size=6, max_levels=5),
        seed=0,
    )
    flops = layout.cost(out["path_X"])["flops"]
    assert out["path_X"][0].all() and len(out["path_X"]) >= 2
    assert np.all(np.diff(flops) <= 0)
    assert np.all(out["path_accuracy"] >= reference[-1] - 0.2 - 1e-12)
    assert np.all(out["path_X"][1:] <= out["path_X"][:-1])  # prunes further, never restores
    ratios = flops / layout.dense_flops
    budgets = np.array([1.0, (ratios[0] + ratios[-1]) / 2, ratios[-1], ratios[-1] / 2])
    levels = path_levels_within(layout, out["path_X"], budgets)
    assert levels[0] == 0 and ratios[levels[2]] == ratios[-1]
    assert ratios[levels[1]] <= budgets[1] and (ratios[: levels[1]] > budgets[1]).all()  # the most FLOPs within
    assert levels[3] is None  # the path never gets that slim


def test_adaptive_bn_uses_its_own_buffers():
    torch.manual_seed(0)
    model = build_model({"name": "vgg", "stages": [[8], [8]], "fc_features": [16]})
    train(model, _split(200, 0), None, TrainConfig(epochs=1, batch_size=32), CPU, seed=0)
    layout = build_layout(model, (1, 28, 28))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = SlicedEvaluator(model, layout, CPU)
    adaptive = SlicedEvaluator(model, layout, CPU, calibration_images=_split(256, 2)["images"])
    masks = layout.repair(np.random.default_rng(0).random((3, layout.num_bits)) < 0.5)
    val = _split(100, 3)
    a, b = plain.accuracy(masks, val), adaptive.accuracy(masks, val)
    assert a.shape == b.shape and not np.array_equal(a, b)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_old_checkpoint_folders_are_removed_newest_kept(tmp_path):
    import os

    from evoprune.core.search.api import remove_old_checkpoints

    folders = []
    for age, name in enumerate(["a", "b", "c", "d"]):  # a newest ... d oldest
        d = tmp_path / name
        d.mkdir()
        for f in ("state.json", "state.npz"):
            (d / f).write_text("x")
            os.utime(d / f, (1e9 - age * 100, 1e9 - age * 100))
        folders.append(d)
    foreign = tmp_path / "notes"  # not a checkpoint: left alone
    foreign.mkdir()
    (foreign / "readme.txt").write_text("mine")
    current = tmp_path / "d"  # the running search's own folder, the oldest: always kept
    removed = remove_old_checkpoints(current, kept=2)
    assert sorted(p.name for p in removed) == ["b", "c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "d", "notes"]
    assert remove_old_checkpoints(tmp_path / "new", kept=1) and not (tmp_path / "a").exists()
    with pytest.raises(ValueError, match=">= 1"):
        remove_old_checkpoints(current, kept=0)


def test_a_rounded_search_evaluates_only_rounded_masks(setup):
    _, layout, _, importance, rank, _, problem, _ = setup
    cfg = SearchConfig(pop_size=12, generations=4, round_to=4)
    result = run_search(problem, cfg, rank, importance, seed=0)
    for g in layout.groups:
        if g.size <= 4:
            continue
        kept = result.evaluated_X[:, g.offset : g.offset + g.size].sum(1)
        assert ((kept % 4 == 0) | (kept == g.size)).all(), g.name
        assert len(set(kept.tolist())) > 1  # the counts still vary


def test_another_methods_masks_seed_the_search_through_the_api(setup, tmp_path):
    model, layout, *_ = setup
    scores = GroupL1((1, 28, 28))(model, layout)
    dst_like = mask_within_budget(layout, scores, 0.3)[None]  # a unit mask as dynamic sparse training gives one
    cfg = SearchConfig(pop_size=8, generations=1, checkpoint_every=1, seed_with_l1=0, max_accuracy_drop=0.9)
    val = _split(60, 1)
    outcome = search_pruning_masks(model, val, None, cfg, 0, CPU, checkpoint_dir=tmp_path, seed_masks=dst_like)
    first = outcome.result.evaluated_X[outcome.result.evaluated_generation == 1]  # generations count from 1
    assert (first == dst_like[0]).all(axis=1).any()  # it is in the first population, as given (already valid)
    assert outcome.cost_ratio(dst_like)[0] == pytest.approx(layout.cost(dst_like)["flops"][0] / layout.dense_flops)
    unseeded = search_pruning_masks(model, val, None, cfg, 0, CPU, checkpoint_dir=tmp_path)
    assert len(list(tmp_path.glob("*/state.npz"))) == 2  # its checkpoint never overwrites the unseeded search's
    first_unseeded = unseeded.result.evaluated_X[unseeded.result.evaluated_generation == 1]
    assert not (first_unseeded == dst_like[0]).all(axis=1).any()
    with pytest.raises(ValueError, match=rf"\(n, {layout.num_bits}\) unit masks"):
        search_pruning_masks(model, val, None, cfg, seed=0, device=CPU, seed_masks=dst_like[:, :-1])


def test_a_seeded_front_is_compared_with_the_unseeded_one_at_each_budget():
    seeded = pd.DataFrame({"flops_ratio": [0.2, 0.4, 0.9], "exit1_accuracy": [0.5, 0.6, 0.7],
                           "exit2_accuracy": [0.80, 0.85, 0.90]})  # fmt: skip
    unseeded = pd.DataFrame({"flops_ratio": [0.3, 0.45], "exit1_accuracy": [0.9, 0.9], "exit2_accuracy": [0.82, 0.84]})
    table = seeded_search_comparison(seeded, unseeded, [0.25, 0.5, 0.1])
    assert table["seeded_accuracy"].tolist()[:2] == [0.80, 0.85]  # the final exit, best within each budget
    assert np.isnan(table["unseeded_accuracy"][0]) and table["unseeded_accuracy"][1] == 0.84
    assert table["gain_pt"][1] == pytest.approx(1.0) and table[["seeded_accuracy", "gain_pt"]].iloc[2].isna().all()


def test_random_allocations_differ_by_layer_keep_l1_units_and_fit_the_budget(setup):
    model, layout, *_ = setup
    scores = GroupL1((1, 28, 28))(model, layout)
    masks = random_allocations(layout, scores, 0.4, 6, np.random.default_rng(3), max_pruning_ratio=0.7)
    assert masks.shape == (6, layout.num_bits)
    assert (layout.flops_ratio(masks) <= 0.4 + 1e-12).all()
    counts = np.array([layout.units_kept(m) for m in masks])
    assert len({tuple(c) for c in counts}) > 1  # the allocations differ
    assert (counts >= layout.min_units(0.7)).all()
    rounded = random_allocations(layout, scores, 0.6, 6, np.random.default_rng(3), round_to=4)
    for g, kept in zip(layout.groups, np.array([layout.units_kept(m) for m in rounded]).T, strict=True):
        assert ((kept % 4 == 0) | (kept == g.size)).all(), g.name
    for mask in masks:  # within every layer, the units with the highest L1 scores
        for g in layout.groups:
            block, score = mask[g.offset : g.offset + g.size], scores[g.offset : g.offset + g.size]
            assert block.any() and (not (~block).any() or score[block].min() >= score[~block].max()), g.name
        assert (layout.mask_with_counts(layout.units_kept(mask), scores) == mask).all()
    again = random_allocations(layout, scores, 0.4, 6, np.random.default_rng(3), max_pruning_ratio=0.7)
    assert (again == masks).all()  # the generator decides
    assert random_allocations(layout, scores, 0.4, 0, np.random.default_rng(3)).shape == (0, layout.num_bits)
    with pytest.raises(ValueError, match="unit counts, one per group"):
        layout.mask_with_counts([1], scores)
    with pytest.raises(ValueError, match=f"{layout.groups[0].name} has {layout.groups[0].size} units"):
        layout.mask_with_counts([0] * len(layout.groups), scores)


def test_allocation_seeds_join_the_first_population_and_bad_settings_are_refused(setup):
    model, layout, *_ = setup
    cfg = SearchConfig(
        pop_size=12, generations=1, seed_with_l1=2, seed_allocations=3, allocation_budgets=[0.5, 0.3],
        max_accuracy_drop=0.9, max_pruning_ratio=0.7, uncapped_below=0.35,
    )  # fmt: skip
    val = _split(60, 1)
    outcome = search_pruning_masks(model, val, None, cfg, 0, CPU)
    first = outcome.result.evaluated_X[outcome.result.evaluated_generation == 1]
    scores = GroupL1((1, 28, 28))(model, layout)
    rng = np.random.default_rng(0)  # the search's seed
    expected = [random_allocations(layout, scores, 0.5, 3, rng, 0.7), random_allocations(layout, scores, 0.3, 3, rng)]
    for mask in np.vstack(expected):  # the 0.3 ones are below uncapped_below: free of the cap, as L1's are
        assert (first == mask).all(axis=1).any()
    with pytest.raises(ValueError, match="needs search.allocation_budgets"):
        SearchConfig(seed_allocations=2)
    with pytest.raises(ValueError, match="cannot hold its 14 fixed masks"):
        SearchConfig(pop_size=12, seed_with_l1=7, seed_allocations=3, allocation_budgets=[0.5, 0.3])
    with pytest.raises(ValueError, match="allocation_budgets"):
        SearchConfig(seed_allocations=1, allocation_budgets=[1.5])
    with pytest.raises(ValueError, match=r"allocation_budgets \[0.5\] lie above search.max_flops_ratio 0.4"):
        SearchConfig(seed_allocations=1, allocation_budgets=[0.5, 0.3], max_flops_ratio=0.4)
    assert SearchConfig(seed_allocations=1, allocation_budgets=[0.4], max_flops_ratio=0.4).max_flops_ratio == 0.4
    with pytest.raises(ValueError, match=r"max_flops_ratio 1e-06 lies below what any mask of this network keeps"):
        search_pruning_masks(model, val, None, SearchConfig(max_flops_ratio=1e-6, generations=1, pop_size=4), 0, CPU)


def test_an_allocation_pool_seeds_the_allocations_predicted_fastest_for_their_flops(setup):
    model, layout, *_ = setup
    latency = profile_latency(model, layout, LatencySettings(batch_size=4, repeats=1, grid_points=3), CPU)
    cfg = SearchConfig(
        pop_size=12, generations=1, seed_allocations=3, allocation_pool=4, allocation_budgets=[0.5],
        max_accuracy_drop=0.9, max_pruning_ratio=0.7,
    )  # fmt: skip
    outcome = search_pruning_masks(model, _split(60, 1), None, cfg, 0, CPU, latency=latency)
    first = outcome.result.evaluated_X[outcome.result.evaluated_generation == 1]
    pool = random_allocations(
        layout, GroupL1((1, 28, 28))(model, layout), 0.5, 12, np.random.default_rng(0), 0.7
    )  # the search's seed draws the pool
    share = layout.flops_ratio(pool) / latency.ratio(layout, pool)
    best, rest = np.argsort(-share, kind="stable")[:3], np.argsort(-share, kind="stable")[3:]
    assert all((first == mask).all(axis=1).any() for mask in pool[best])
    assert share[best].min() >= share[rest].max()  # no slower allocation of the pool was kept instead
    with pytest.raises(ValueError, match=r"allocation_pool \(4\) .* needs the latency model's tables"):
        search_pruning_masks(model, _split(60, 1), None, cfg, 0, CPU)


def test_why_infeasible_counts_each_constraint_broken_alone_and_the_nearest_miss():
    G = np.array([[0.1, -1.0], [0.2, 0.3], [-0.1, 0.05], [0.4, -0.2]])
    said = why_infeasible(["search.max_accuracy_drop 0.5", "search.max_flops_ratio 0.3"], G)
    assert said.startswith("none of the 4 candidates met every constraint")
    assert "search.max_accuracy_drop 0.5: broken by 3, by 2 alone, the nearest by 0.1" in said
    assert "search.max_flops_ratio 0.3: broken by 2, by 1 alone, the nearest by 0.05" in said


def test_a_search_with_no_feasible_candidate_says_which_constraints_its_candidates_broke(setup, caplog):
    model, *_ = setup
    cfg = SearchConfig(pop_size=8, generations=2, max_accuracy_drop=1e-6, max_flops_ratio=0.2)
    with caplog.at_level("WARNING", logger="evoprune.core.search.api"):
        outcome = search_pruning_masks(model, _split(60, 1), None, cfg, 0, CPU)
    assert not len(outcome.result.front_X)  # a LeNet-5 at 20% of its FLOPs as accurate as the dense one: none
    warning = next(r.getMessage() for r in caplog.records if "kept no feasible candidate" in r.getMessage())
    G = outcome.result.evaluated_G
    assert f"none of the {len(G)} candidates" in warning and len(G) == outcome.evaluations
    broke_drop, broke_ceiling = (G > 0).sum(0)
    assert f"search.max_accuracy_drop 1e-06 (before fine-tuning, on error): broken by {broke_drop}," in warning
    assert f"search.max_flops_ratio 0.2: broken by {broke_ceiling}," in warning
    assert broke_ceiling >= 1  # the dense mask, at least, is above the ceiling
