"""Parameters that shape the pipelines themselves, read when the pipelines are registered.

``finetune.variants`` decides which Kedro namespaces ``finetune`` has (one box per variant in Kedro-Viz,
``<variant>.finetune_results`` and friends in the catalog) and which results ``report`` reads.

Kedro registers pipelines before it knows a run's environment or ``--params`` (kedro-org/kedro#3093), so the
list is read from the YAML of ``conf/base`` merged with ``conf/local``: what a plain ``kedro run`` uses. Not
with an ``OmegaConfigLoader``: creating one re-registers the ``globals`` resolver for the whole process, and
the run's catalog would then resolve ``${globals:outputs}`` to conf/base's folder instead of its environment's. A run's own parameters (``--env=vgg``, ``--params``) may list fewer variants: the nodes of
the others are skipped. A variant that only they list has no namespace: ``VariantNamespacesHook`` refuses
such a run before any node runs.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from kedro.utils import find_kedro_project

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
    finetune: dict = {}
    for env in ("base", "local"):  # conf/local overrides conf/base key by key (the project's soft merge)
        for path in sorted((Path(project) / "conf" / env).glob("parameters*.yml")):
            finetune.update((yaml.safe_load(path.read_text()) or {}).get("finetune") or {})
    return list(FinetuneParams.model_validate(finetune).variants)
