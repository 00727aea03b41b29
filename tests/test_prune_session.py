"""A whole `prune` run through a real KedroSession on tiny generated data, tracked in a temporary
MLflow SQLite store which the test reads back."""

import shutil

import mlflow
import pandas as pd
import pytest
import torch

from evoprune.core.reinit import VARIANTS
from evoprune.pipeline_registry import PRUNE_STAGES, register_pipelines
from tests.conftest import run_tiny_session
from tests.dst_check import assert_dst_runs_after_prune
from tests.exit_search_check import assert_exit_search_runs_after_prune
from tests.latency_check import assert_latency_search_runs_after_prune
from tests.notebook_check import assert_notebook_explores
from tests.scoring_net_check import assert_scoring_net_runs_after_prune
from tests.seeds_check import assert_seeded_report_after_prune

pytestmark = pytest.mark.slow


def _assert_stage_tracked(client, run, stage: str, metric_names: tuple[str, ...], artifact_names: tuple[str, ...]):
    """The run holds ``<stage>.<metric>`` for every metric and ``<stage>/<file>`` for every artifact."""
    for name in metric_names:
        assert f"{stage}.{name}" in run.data.metrics, f"{stage}.{name}"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, stage)}
    assert {f"{stage}/{name}" for name in artifact_names} <= artifacts


def _run(project, to_outputs=None, **kwargs):
    return run_tiny_session(project, "prune", to_outputs, **kwargs)


def test_prune_run_is_tracked_in_mlflow(tiny_project, monkeypatch):
    _run(tiny_project)
    monkeypatch.setenv("KEDRO_ENV", "tiny")  # inherited by the notebook's kernel
    assert_notebook_explores(tiny_project)  # the exploration notebook runs on this finished run
    assert (tiny_project / "data/tiny/06_models/dense_model.pt").is_file()
    assert (tiny_project / "data/tiny/06_models/dense_model_init.pt").is_file()
    assert (tiny_project / "data/tiny/08_reporting/dense_training_curves.png").is_file()
    assert (tiny_project / "data/01_raw/FashionMNIST/raw/train-images-idx3-ubyte").is_file()  # raw data is shared
    assert not (tiny_project / "data/06_models").exists()  # the default env's artifacts are never touched

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tiny_project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("evoprune").experiment_id
    runs = client.search_runs([experiment])
    (run,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]  # children: one per model fine-tuned
    metrics = run.data.metrics
    assert "data_preparation.train_size" in metrics
    _assert_stage_tracked(
        client,
        run,
        "train_dense",
        ("test_accuracy", "val_accuracy_final", "flops", "params", "train_seconds"),
        ("dense_model.pt", "dense_model_init.pt", "dense_training_curves.png"),
    )
    assert metrics["train_dense.test_accuracy"] > 0.5
    assert metrics["data_preparation.train_size"] == 500
    losses = client.get_metric_history(run.info.run_id, "train_dense.train_loss")
    assert sorted(m.step for m in losses) == [1, 2]
    assert run.data.params["train_dense.training.epochs"] == "2"
    assert run.data.params["train_dense.model.name"] == "lenet5"

    _assert_stage_tracked(
        client,
        run,
        "build_exits",
        (
            "exit1.test_accuracy",
            "exit2.test_accuracy",
            "exit1.flops",
            "operating.threshold",
            "operating.test_flops_saving",
            "latency.speedup",
            "latency.dense_ms",
        ),
        (
            "multi_exit_model.pt",
            "multi_exit_model_init.pt",
            "early_exit_table.csv",
            "exit_summary.csv",
            "exit_accuracy_vs_flops.png",
            "early_exit_tradeoff.png",
        ),
    )
    assert metrics["build_exits.exit1.flops"] < metrics["build_exits.exit2.flops"] == metrics["train_dense.flops"]
    table = pd.read_csv(tiny_project / "data/tiny/08_reporting/early_exit_table.csv")
    assert table["threshold"].tolist() == sorted(table["threshold"]) and table["threshold"].iloc[-1] == 1.0
    assert table["test_share_exit2"].iloc[-1] == 1.0

    _assert_stage_tracked(
        client,
        run,
        "mask_search",
        ("front_size", "search_seconds", "evaluations_per_second", "hypervolume", "best_accuracy_at_0.5_flops"),
        ("pareto_set.csv", "mask_search_history.csv", "chosen_members.csv", "pareto_members.pt", "pareto_front.png"),
    )
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "mask_search.hypervolume")) == [1, 2]
    pareto = pd.read_csv(tiny_project / "data/tiny/07_model_output/pareto_set.csv", dtype={"mask": str})
    assert len(pareto) == metrics["mask_search.front_size"] and pareto["flops_ratio"].max() <= 1.0
    assert (pareto["mask"].str.len() == metrics["mask_search.num_units"]).all()  # one bit per unit

    candidates = pd.read_csv(tiny_project / "data/tiny/07_model_output/chosen_members.csv")
    selection = pd.read_csv(tiny_project / "data/tiny/07_model_output/member_selection.csv")
    assert selection["member"].tolist() == candidates["member"].tolist()
    assert selection.groupby("budget")["selected"].sum().eq(1).all()  # one member per budget
    contested = selection[selection.groupby("budget")["member"].transform("size") > 1]
    assert len(contested) and contested["val_accuracy_after_finetune"].notna().all()
    for _, group in contested.groupby("budget"):  # the best after fine-tuning (validation) was kept
        assert (
            group.loc[group["selected"], "val_accuracy_after_finetune"].iloc[0]
            == group["val_accuracy_after_finetune"].max()
        )
    chosen = selection[selection["selected"]]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "finetune")}
    assert {"finetune/selected_members.pt", "finetune/member_selection.csv"} <= artifacts
    assert metrics["finetune.selection.candidates_finetuned"] == len(contested)
    report = pd.read_csv(tiny_project / "data/tiny/08_reporting/report_table.csv")
    assert len(report) == 1 + len(chosen) * (len(VARIANTS) + 2)  # dense, members x variants, l1 + random
    assert set(report["method"]) == {"dense", *VARIANTS, "l1", "random"}
    assert (report.loc[report["kind"] != "dense", "flops_ratio"] < 1.0).all()
    for variant in VARIANTS:
        _assert_stage_tracked(
            client,
            run,
            f"finetune.{variant}",
            tuple(
                f"member{m}.{k}" for m in chosen["member"] for k in ("test_accuracy", "flops_ratio", "speedup_batch20")
            ),
            (),
        )
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, f"finetune/{variant}")}
        assert {f"finetune/{variant}/{variant}_results.csv", f"finetune/{variant}/{variant}_members.pt"} <= artifacts
        exported = tiny_project / f"data/tiny/06_models/finetuned/{variant}_exported"
        assert {p.name for p in exported.iterdir()} == {
            f"member{m}{suffix}" for m in chosen["member"] for suffix in (".onnx", ".torchscript.pt")
        }
    _assert_stage_tracked(
        client,
        run,
        "report",
        ("variant.keep.mean_drop_pt", f"member{chosen['member'].iloc[0]}.margin_over_l1_pt"),
        ("report_table.csv", "report_verdicts.csv", "accuracy_vs_flops.png", "variant_comparison.png"),
    )
    assert "finetune.dense.latency_ms_batch20" in metrics and "baselines.l1.member" in " ".join(metrics)
    assert_dst_runs_after_prune(tiny_project, client, experiment)  # dynamic sparse training on this run
    assert_scoring_net_runs_after_prune(tiny_project, client, experiment)  # the learned criterion on this run
    assert_seeded_report_after_prune(tiny_project, client, experiment)  # report.seeds 2, more baselines
    assert_exit_search_runs_after_prune(tiny_project, client, experiment)  # the search judged on every exit
    assert_latency_search_runs_after_prune(tiny_project, client, experiment)  # last: it searches again

    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == run.info.run_id]
    finetuned = [r for r in children if r.data.tags["stage"] == "finetune"]
    assert len(finetuned) == len(VARIANTS) * len(chosen)
    assert {r.data.tags["variant"] for r in finetuned} == set(VARIANTS)
    assert all("test_accuracy" in r.data.metrics and "latency_ms_batch1" in r.data.metrics for r in finetuned)
    assert len([r for r in children if r.data.tags["stage"] == "baselines"]) == 2 * len(chosen)


def test_same_seed_same_model_through_the_session(tiny_project):
    _run(tiny_project, to_outputs=["dense_model"])  # data_preparation and train_dense
    first = torch.load(tiny_project / "data/tiny/06_models/dense_model.pt", weights_only=True)["state_dict"]
    _run(tiny_project, to_outputs=["dense_model"])
    second = torch.load(tiny_project / "data/tiny/06_models/dense_model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize(
    ("runtime_params", "message"),
    [
        ({"train_dense": {"training": {"learning_rate": -1.0}}}, r"train_dense[\s\S]*learning_rate"),
        ({"report": {"seeds": 0}}, r"report[\s\S]*seeds[\s\S]*greater than 0"),
        ({"baselines": {"criteria": ["l1", "obd"]}}, r"baselines[\s\S]*criteria[\s\S]*'hessian'"),
        ({"baselines": {"rankings": ["global"]}}, r"baselines[\s\S]*rankings[\s\S]*'torch_pruning'"),
    ],
    ids=["negative_learning_rate", "no_seeds", "unknown_criterion", "unknown_ranking"],
)
def test_bad_parameters_stop_the_run_before_any_node(tiny_project, runtime_params, message):
    with pytest.raises(Exception, match=message):
        _run(tiny_project, runtime_params=runtime_params)
    assert not (tiny_project / "data/tiny/05_model_input/fashion_mnist_train.pt").exists()


@pytest.mark.parametrize(
    ("runtime_params", "message"),
    [
        ({"build_exits": {"exit_after": ["stages.0", "conv9"]}}, r"build_exits.exit_after.*no module \['conv9'\]"),
        ({"train_dense": {"model": {"source": "torchvision", "name": "resnet19"}}}, r"'resnet19' is not a torchvision"),
        (
            {"train_dense": {"model": {"source": "factory", "factory": "my_lab.nets:tiny"}}},
            r"train_dense.model.factory.*cannot import 'my_lab.nets'",
        ),
        (
            {"train_dense": {"checkpoint": {"path": "elsewhere/vgg.pt"}}},
            r"train_dense.checkpoint.path.*no checkpoint file",
        ),
    ],
    ids=[
        "exit_after_a_missing_module",
        "unknown_torchvision_name",
        "factory_that_does_not_import",
        "missing_checkpoint",
    ],
)
def test_bad_model_configuration_stops_the_run_before_training(tiny_project, runtime_params, message):
    with pytest.raises(Exception, match=message):
        _run(tiny_project, runtime_params=runtime_params)
    assert not (tiny_project / "data/tiny/05_model_input/fashion_mnist_train.pt").exists()


def test_a_checkpoint_of_another_architecture_stops_the_run_before_training(tiny_project):
    from evoprune.core.models import build_model

    torch.save(build_model({"name": "lenet5", "conv_channels": [8, 16]}).state_dict(), tiny_project / "wide.pt")
    with pytest.raises(Exception, match=r"wide.pt does not fit the model lenet5.*shapes differ.*stages.0.0.weight"):
        _run(tiny_project, runtime_params={"train_dense": {"checkpoint": {"path": str(tiny_project / "wide.pt")}}})
    assert not (tiny_project / "data/tiny/06_models/dense_model.pt").exists()


FOREIGN_MODELS = {
    "torchvision_mobilenet_v2": (
        {"source": "torchvision", "name": "mobilenet_v2", "kwargs": {"width_mult": 0.25}},
        ["features.3"],
    ),
    "factory": (
        {"source": "factory", "factory": "tests.core.test_any_model:two_branch_net", "kwargs": {"num_classes": 10}},
        ["stem"],
    ),
}


@pytest.mark.parametrize("name", sorted(FOREIGN_MODELS))
def test_prune_runs_on_a_model_from_elsewhere(tiny_project, name):
    from evoprune.datasets import TorchModelDataset

    model, exits = FOREIGN_MODELS[name]
    _run(
        tiny_project,
        runtime_params={
            "train_dense": {"model": model},
            "build_exits": {"exit_after": exits},
            "mask_search": {"member_budgets": [0.5], "candidates_per_budget": 1},  # one fine-tune per method
            "finetune": {"variants": ["keep"]},
        },
    )
    dense = TorchModelDataset(filepath=str(tiny_project / "data/tiny/06_models/dense_model.pt")).load()
    assert dense.spec["source"] == model["source"]
    multi = TorchModelDataset(filepath=str(tiny_project / "data/tiny/06_models/multi_exit_model.pt")).load()
    assert multi.exit_points == [*exits, "output"]
    report = pd.read_csv(tiny_project / "data/tiny/08_reporting/report_table.csv")
    members = report[report["kind"] == "member"]
    assert set(members["method"]) == {"keep"} and len(members) >= 1
    assert (report.loc[report["kind"] != "dense", "flops_ratio"] < 1.0).all()
    assert (report.loc[report["kind"] != "dense", "params_ratio"] < 1.0).all()
    assert set(report.loc[report["kind"] == "baseline", "method"]) == {"l1", "random"}
    exported = tiny_project / "data/tiny/06_models/finetuned/keep_exported"
    assert {p.suffix for p in exported.iterdir()} == {".onnx", ".pt"}


def test_thresholds_outside_the_unit_interval_are_refused(tiny_project):
    with pytest.raises(Exception, match=r"build_exits[\s\S]*thresholds must lie in \(0, 1\]"):
        _run(tiny_project, runtime_params={"build_exits": {"thresholds": [0.5, 1.5]}})


def test_missing_data_fails_at_once_naming_the_file(tiny_project):
    (tiny_project / "conf/tiny/globals.yml").write_text(f"dataset:\n  source_dir: {tiny_project / 'nowhere'}\n")
    with pytest.raises(Exception, match=r"train-images-idx3-ubyte.*apt-get install dataset-fashion-mnist"):
        _run(tiny_project)


def test_kedro_viz_build_succeeds(tiny_project):
    import json
    import subprocess
    import sys
    from pathlib import Path

    kedro = Path(sys.executable).with_name("kedro")
    result = subprocess.run([str(kedro), "viz", "build"], cwd=tiny_project, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    pipelines = json.loads((tiny_project / "build/api/main").read_text())["pipelines"]
    assert set(register_pipelines()) - {"__default__"} <= {p["id"] for p in pipelines}
    main = json.loads((tiny_project / "build/api/main").read_text())
    boxes = [c["id"] for c in main["modular_pipelines"]["__root__"]["children"] if c["type"] == "modularPipeline"]
    assert sorted(boxes) == sorted(PRUNE_STAGES)  # the graph opens as one box per stage
    finetune = json.loads((tiny_project / "build/api/pipelines/finetune").read_text())
    assert {f"finetune.{v}" for v in VARIANTS} <= set(finetune["modular_pipelines"])  # the variants inside finetune
    tasks = [n for n in finetune["nodes"] if n["type"] == "task" and n["name"] == "finetune_members"]
    assert sorted(m for n in tasks for m in n["modular_pipelines"]) == sorted(f"finetune.{v}" for v in VARIANTS)


def test_images_that_do_not_fit_the_model_stop_the_run_before_training(tiny_project):
    model = {"name": "resnet_cifar", "width": 4, "in_channels": 1, "input_size": 32}
    with pytest.raises(
        ValueError, match=r"gives fashion_mnist images of shape \(1, 28, 28\).*expects \(1, 32, 32\).*image_size: 32"
    ):
        _run(tiny_project, runtime_params={"train_dense": {"model": model}, "build_exits": {"exit_after": ["layer1"]}})
    assert not (tiny_project / "data/tiny/05_model_input/fashion_mnist_train.pt").exists()


def test_population_scoring_on_local_dask_workers_gives_the_serial_front(tiny_project, capfd):
    threads = torch.get_num_threads()  # the workers sum floats with as many threads as this process
    _run(tiny_project, to_outputs=["pareto_set", "mask_search_history"])
    folder = tiny_project / "data/tiny/07_model_output"
    serial = {name: (folder / f"{name}.csv").read_text() for name in ("pareto_set", "mask_search_history")}
    shutil.rmtree(folder / "mask_search_checkpoints")  # else the second run resumes the finished search
    dask = {"scheduler": "local", "workers": 2, "threads_per_worker": threads}
    capfd.readouterr()
    _run(tiny_project, ["pareto_set", "mask_search_history"], runtime_params={"mask_search": {"distributed": dask}})
    assert "scoring on Dask" in "".join(capfd.readouterr())  # Kedro's log handler writes to the terminal
    assert {name: (folder / f"{name}.csv").read_text() for name in serial} == serial
