"""Parameters that shape the pipelines themselves, read when the pipelines are registered.

``finetune.variants`` decides which Kedro namespaces ``finetune`` has (one box per variant in Kedro-Viz,
``<variant>.finetune_results`` and friends in the catalog) and which results ``report`` reads.

Kedro registers pipelines before it knows a run's environment or ``--params`` (kedro-org/kedro#3093), so the
list is read with the project's config loader from ``conf/base`` merged with ``conf/local``: what a plain
``kedro run`` uses. A run's own parameters (``--env=vgg``, ``--params``) may list fewer variants: the nodes of
the others are skipped. A variant that only they list has no namespace: ``VariantNamespacesHook`` refuses
such a run before any node runs.
"""

from __future__ import annotations

from pathlib import Path

from kedro.config import OmegaConfigLoader
from kedro.utils import find_kedro_project

from evoprune import settings
from evoprune.core.finetune_config import FinetuneParams


def finetune_variants(project_path: str | Path | None = None) -> list[str]:
    """``finetune.variants`` of ``conf/base`` + ``conf/local`` of the project (default: the Kedro project
    holding the working directory), validated."""
    project = Path(project_path) if project_path else find_kedro_project(Path.cwd())
    if project is None:
        raise RuntimeError(
            f"no Kedro project holds {Path.cwd()}: the finetune namespaces are built from finetune.variants in "
            "the project's conf/; run Kedro (or register the pipelines) from inside the project"
        )
    loader = OmegaConfigLoader(str(Path(project) / "conf"), **settings.CONFIG_LOADER_ARGS)
    return list(FinetuneParams.model_validate(loader["parameters"].get("finetune", {})).variants)
