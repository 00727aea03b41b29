"""The finetune namespaces (and what report reads) come from finetune.variants in the project's conf."""

import shutil

import pytest

from evoprune.pipeline_config import finetune_variants
from evoprune.pipelines import finetune, report
from tests.conftest import PROJECT_ROOT


@pytest.fixture
def project(tmp_path):
    shutil.copy(PROJECT_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(PROJECT_ROOT / "conf", tmp_path / "conf", ignore=shutil.ignore_patterns("local"))
    (tmp_path / "conf" / "local").mkdir()
    return tmp_path


def test_variants_are_read_from_conf_base_and_conf_local(project, monkeypatch):
    assert finetune_variants(project) == ["keep", "rewind", "random", "sign", "distribution", "magnitude"]
    (project / "conf" / "local" / "parameters.yml").write_text("finetune:\n  variants: [rewind, keep]\n")
    assert finetune_variants(project) == ["rewind", "keep"]
    (project / "conf" / "vgg" / "parameters_finetune.yml").write_text("finetune:\n  variants: [sign]\n")
    assert finetune_variants(project) == ["rewind", "keep"]  # an environment only narrows a run (skipped nodes)
    monkeypatch.chdir(project / "conf")  # found from anywhere inside the project
    assert finetune_variants() == ["rewind", "keep"]


def test_bad_or_missing_variant_lists_are_refused(project, tmp_path_factory, monkeypatch):
    (project / "conf" / "local" / "parameters.yml").write_text("finetune:\n  variants: [keep, prune]\n")
    with pytest.raises(ValueError, match=r"variants\.1[\s\S]*'keep', 'rewind'"):
        finetune_variants(project)
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    with pytest.raises(RuntimeError, match="no Kedro project holds .*run Kedro .* from inside the project"):
        finetune_variants()


@pytest.mark.parametrize("variants", [["keep"], ["rewind", "sign"]])
def test_one_namespace_per_variant_and_report_reads_each(variants):
    pipeline = finetune.create_pipeline(variants=variants)
    assert {n.namespace for n in pipeline.nodes if n.namespace} == set(variants)
    assert {f"{v}.finetune_runs" for v in variants} <= pipeline.outputs()
    reads = {i for i in report.create_pipeline(variants=variants).inputs() if i.endswith(".finetune_results")}
    assert reads == {f"{v}.finetune_results" for v in variants}


def test_reading_the_variants_leaves_the_runs_globals_alone(project):
    """Registering the pipelines must not re-point ${globals:outputs} of the run's own environment."""
    from kedro.config import OmegaConfigLoader

    from evoprune import settings

    (project / "conf" / "mine").mkdir()
    (project / "conf" / "mine" / "globals.yml").write_text("outputs: data/mine\n")
    loader = OmegaConfigLoader(str(project / "conf"), env="mine", **settings.CONFIG_LOADER_ARGS)
    finetune_variants(project)  # what registering the pipelines does, after the session's loader exists
    filepath = loader["catalog"]["dense_model"]["dataset"]["filepath"]
    assert filepath == "data/mine/06_models/dense_model.pt"
