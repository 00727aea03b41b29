"""Nodes called as plain functions, and stage slices run on an in-memory catalog."""

import pytest
import torch
import yaml
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from matplotlib.figure import Figure
from pydantic import ValidationError

from evoprune.core.data import load_raw_dataset
from evoprune.core.reinit import VARIANTS
from evoprune.core.report_table import ReportParams
from evoprune.pipeline_config import finetune_variants
from evoprune.pipeline_registry import register_pipelines
from evoprune.pipelines.baselines.nodes import BaselinesParams
from evoprune.pipelines.build_exits.nodes import BuildExitsParams
from evoprune.pipelines.data_preparation.nodes import DataPreparationParams, split_dataset, summarise_splits
from evoprune.pipelines.finetune.nodes import FinetuneParams
from evoprune.pipelines.latency_profile.nodes import LatencyProfileParams
from evoprune.pipelines.mask_search.nodes import MaskSearchParams
from evoprune.pipelines.train_dense.nodes import (
    TrainDenseParams,
    evaluate_dense_model,
    initialise_model,
    plot_training_history,
    train_dense_model,
)
from tests.conftest import PROJECT_ROOT

TINY_TRAIN = {
    "model": {"name": "lenet5"},
    "training": {"epochs": 2, "batch_size": 20, "optimizer": "adamw", "learning_rate": 3e-3},
}


@pytest.fixture
def raw(fake_idx_dir, tmp_path):
    return load_raw_dataset(tmp_path, "fashion_mnist", fake_idx_dir)


def test_split_dataset_sizes(raw):
    train, val, test = split_dataset(raw, DataPreparationParams(validation_size=100), seed=0)
    assert (train["labels"].numel(), val["labels"].numel(), test["labels"].numel()) == (500, 100, 200)
    assert train["images"].shape == (500, 28, 28)  # the defaults change nothing
    metrics = summarise_splits(train, val, test)
    assert metrics["validation_size"] == {"value": 100.0, "step": 0}
    assert metrics["image_channels"]["value"] == 1.0 and metrics["image_width"]["value"] == 28.0


def test_split_dataset_pads_and_replicates_for_a_colour_32px_model(raw):
    params = DataPreparationParams(validation_size=100, image_size=32, resize_mode="pad", channels=3)
    train, val, test = split_dataset(raw, params, seed=0)
    assert train["images"].shape == (500, 3, 32, 32) and test["images"].shape == (200, 3, 32, 32)
    assert torch.equal(test["images"][:, 1, 2:30, 2:30], raw["test_images"])
    metrics = summarise_splits(train, val, test)
    assert [metrics[f"image_{k}"]["value"] for k in ("channels", "height", "width")] == [3.0, 32.0, 32.0]


def test_data_preparation_params_refuse_zero():
    with pytest.raises(ValidationError, match="validation_size"):
        DataPreparationParams(validation_size=0)


@pytest.mark.parametrize(
    ("key", "value"), [("resize_mode", "crop"), ("channels", 2), ("image_size", [32, 32, 3]), ("image_size", 0)]
)
def test_data_preparation_params_refuse_bad_shapes(key, value):
    with pytest.raises(ValidationError, match=key):
        DataPreparationParams(**{key: value})


def test_data_preparation_yaml_defaults_equal_the_model_defaults():
    text = (PROJECT_ROOT / "conf" / "base" / "parameters_data_preparation.yml").read_text()
    from_yaml = DataPreparationParams.model_validate(yaml.safe_load(text)["data_preparation"])
    assert from_yaml == DataPreparationParams()
    assert from_yaml.model_dump() == {
        "validation_size": 5000,
        "image_size": None,
        "resize_mode": "pad",
        "channels": None,
    }


def test_train_dense_nodes_learn_and_keep_theta0(raw):
    params = TrainDenseParams.model_validate(TINY_TRAIN)
    train, val, test = split_dataset(raw, DataPreparationParams(validation_size=100), seed=0)
    init = initialise_model(params, seed=1)
    theta0 = {k: v.clone() for k, v in init.state_dict().items()}
    model, history = train_dense_model(init, train, val, params, seed=1, device="cpu")
    assert all(torch.equal(theta0[k], init.state_dict()[k]) for k in theta0), "training must not touch θ0"
    assert any(not torch.equal(theta0[k], model.state_dict()[k]) for k in theta0)
    assert [p["step"] for p in history["train_loss"]] == [1, 2]
    metrics = evaluate_dense_model(model, val, test, device="cpu")
    assert metrics["test_accuracy"]["value"] > 0.5  # the fake classes are easy; chance is 0.1
    assert metrics["flops"]["value"] > 0 and metrics["params"]["value"] == 61706
    fig = plot_training_history(history, params)
    assert list(fig.axes[0].lines[0].get_ydata()) == [p["value"] for p in history["train_loss"]]


def test_train_dense_starts_from_a_checkpoint_trained_elsewhere(raw, tmp_path):
    train, val, _ = split_dataset(raw, DataPreparationParams(validation_size=100), seed=0)
    elsewhere = initialise_model(TrainDenseParams.model_validate(TINY_TRAIN), seed=7)
    torch.save(elsewhere.state_dict(), tmp_path / "elsewhere.pt")
    init = initialise_model(TrainDenseParams.model_validate(TINY_TRAIN), seed=1)
    skip = TrainDenseParams.model_validate(
        {**TINY_TRAIN, "checkpoint": {"path": str(tmp_path / "elsewhere.pt"), "then": "skip"}}
    )
    model, history = train_dense_model(init, train, val, skip, seed=1, device="cpu")
    assert history == {} and all(torch.equal(v, model.state_dict()[k]) for k, v in elsewhere.state_dict().items())
    finetune = skip.model_copy(update={"checkpoint": skip.checkpoint.model_copy(update={"then": "finetune"})})
    tuned, history = train_dense_model(init, train, val, finetune, seed=1, device="cpu")
    assert len(history["train_loss"]) == 2
    moved = [k for k, v in elsewhere.state_dict().items() if not torch.equal(v, tuned.state_dict()[k])]
    assert moved  # trained from the checkpoint's weights...
    scratch, _ = train_dense_model(init, train, val, TrainDenseParams.model_validate(TINY_TRAIN), seed=1, device="cpu")
    assert not torch.equal(
        scratch.state_dict()["stages.0.0.weight"], tuned.state_dict()["stages.0.0.weight"]
    )  # ...not θ0's


def test_training_plot_reads_history_as_mlflow_loads_it_back():
    params = TrainDenseParams.model_validate(TINY_TRAIN)
    loaded = {  # MlflowMetricsHistoryDataset.load(): prefixed keys, steps in any order, one step as a dict
        "train_dense.train_loss": [{"step": 2, "value": 0.5}, {"step": 1, "value": 0.9}],
        "train_dense.val_accuracy": [{"step": 1, "value": 0.7}, {"step": 2, "value": 0.8}],
        "train_dense.train_seconds": {"step": 0, "value": 12.0},
    }
    fig = plot_training_history(loaded, params)
    assert list(fig.axes[0].lines[0].get_ydata()) == [0.9, 0.5]
    assert list(fig.axes[1].lines[0].get_ydata()) == [70.0, 80.0]


def test_initialise_model_is_seeded():
    params = TrainDenseParams.model_validate(TINY_TRAIN)
    a, b = initialise_model(params, 5).state_dict(), initialise_model(params, 5).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"model": {"name": "alexnet"}}, "model"),
        ({"training": {"learning_rate": -0.01}}, "training.learning_rate"),
        ({"training": {"batch_size": 0}}, "training.batch_size"),
        ({"training": {"optimizer": "rmsprop"}}, "training.optimizer"),
    ],
)
def test_train_dense_params_name_the_bad_key(override, key):
    raw_params = {**TINY_TRAIN, **{k: {**TINY_TRAIN[k], **v} for k, v in override.items()}}
    with pytest.raises(ValidationError, match=key.replace(".", r"\.")):
        TrainDenseParams.model_validate(raw_params)


def test_prune_slice_on_an_in_memory_catalog(raw):
    prune = register_pipelines()["prune"]
    catalog = DataCatalog(
        {
            "raw_images": MemoryDataset(raw),
            "method_results": MemoryDataset({}),  # no method beside prune has run
            "params:data_preparation": MemoryDataset(DataPreparationParams(validation_size=100)),
            "params:train_dense": MemoryDataset(TrainDenseParams.model_validate(TINY_TRAIN)),
            "params:build_exits": MemoryDataset(
                BuildExitsParams(training={"epochs": 1, "batch_size": 50}, latency={"batch_size": 50, "repeats": 1})
            ),
            "params:mask_search": MemoryDataset(
                MaskSearchParams(
                    validation_subset=50,
                    member_budgets=None,
                    random_masks=2,
                    checkpoint_dir=None,
                    roulette_branch=None,
                    search={"pop_size": 4, "generations": 1, "max_accuracy_drop": 0.9},
                )
            ),
            "params:finetune": MemoryDataset(
                FinetuneParams(
                    variants=["keep", "rewind"],
                    training={"epochs": 1, "batch_size": 50},
                    measurement={"latency_batch_sizes": [1, 20], "latency_repeats": 1},
                )
            ),
            "params:baselines": MemoryDataset(BaselinesParams(criteria=["l1"])),
            "latency_table_cache": MemoryDataset({}),  # nothing measured before
            "params:latency_profile": MemoryDataset(
                LatencyProfileParams(batch_size=8, repeats=1, grid_points=2, calibration_masks=2, validation_masks=2)
            ),
            "params:mask_search.search.max_pruning_ratio": MemoryDataset(1.0),
            "params:mask_search.search.round_to": MemoryDataset(1),
            "params:seed": MemoryDataset(0),
            "params:report": MemoryDataset(ReportParams()),
            "params:device": MemoryDataset("cpu"),
        }
    )
    outputs = SequentialRunner().run(prune, catalog)
    assert {
        "data_preparation_metrics",
        "train_dense_metrics",
        "dense_training_curves",
        "build_exits_history",
        "exit_accuracy_plot",
        "early_exit_tradeoff_plot",
        "mask_search_metrics",
        "pareto_front_plot",
        "keep.exported_members",
        "rewind.finetune_metrics",
        "baseline_metrics",
        "report_metrics",
        "report_verdicts",
        "accuracy_vs_flops_plot",
        "variant_comparison_plot",
    } <= set(outputs)
    assert outputs["train_dense_metrics"].load()["test_accuracy"]["value"] > 0.5
    assert isinstance(outputs["dense_training_curves"].load(), Figure)
    summary = outputs["report_metrics"].load()
    variants = {k.split(".")[1] for k in summary if k.startswith("variant.")}
    assert variants == {"keep", "rewind"}  # the four unlisted variants were skipped
    margins = [k for k in summary if k.endswith(".margin_over_l1_pt")]
    assert margins and not [k for k in summary if "margin_over_random" in k]
    assert outputs["sign.exported_members"].load() == {}


def test_registry_has_every_stage_and_prune_is_default():
    pipelines = register_pipelines()
    assert {"data_preparation", "train_dense", "build_exits", "mask_search", "prune", "__default__"} <= set(pipelines)
    assert pipelines["__default__"] is pipelines["prune"]
    stages = (
        "data_preparation",
        "train_dense",
        "build_exits",
        "latency_profile",
        "mask_search",
        "finetune",
        "baselines",
        "report",
    )
    assert {n.name for n in pipelines["prune"].nodes} == {n.name for s in stages for n in pipelines[s].nodes}


def test_finetune_has_one_namespace_per_configured_variant():
    pipelines = register_pipelines()
    finetune = pipelines["finetune"]
    namespaces = {n.namespace for n in finetune.nodes if n.namespace} - {"finetune"}
    assert namespaces == {f"finetune.{v}" for v in finetune_variants()} == {f"finetune.{v}" for v in VARIANTS}
    assert {f"{v}.finetune_results" for v in VARIANTS} <= pipelines["report"].inputs()
    rewind = finetune.only_nodes_with_namespaces(["finetune.rewind"])  # --namespaces=finetune.rewind
    assert "rewind.finetune_results" in rewind.outputs()
    assert {"selected_members", "multi_exit_model_init", "params:finetune"} <= rewind.inputs()
    select = finetune.only_nodes("finetune.select_members")
    assert select.inputs() >= {"pareto_members", "chosen_members"} and "selected_members" in select.outputs()
