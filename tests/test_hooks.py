import pytest
from kedro.io import DataCatalog, MemoryDataset

from evoprune.hooks import VariantNamespacesHook
from evoprune.pipelines import finetune


@pytest.fixture
def registered(monkeypatch):
    """The project's registered pipelines, with finetune built for keep and rewind only."""
    pipeline = finetune.create_pipeline(variants=["keep", "rewind"])
    monkeypatch.setattr("kedro.framework.project.pipelines", {"finetune": pipeline})
    return pipeline


def _catalog(variants):
    return DataCatalog({"params:finetune": MemoryDataset({"variants": variants})})


def test_a_variant_without_a_namespace_stops_the_run(registered):
    with pytest.raises(ValueError, match=r"finetune.variants lists \['sign'\].*conf/base/parameters_finetune.yml"):
        VariantNamespacesHook().before_pipeline_run(registered, _catalog(["keep", "sign"]))


def test_fewer_variants_and_one_namespace_alone_are_fine(registered):
    VariantNamespacesHook().before_pipeline_run(registered, _catalog(["rewind"]))
    alone = registered.only_nodes_with_namespaces(["rewind"])  # --namespaces=rewind
    VariantNamespacesHook().before_pipeline_run(alone, _catalog(["keep", "rewind"]))
