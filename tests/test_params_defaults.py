"""Every typed parameter class's defaults equal conf/base, the values users run: one source, checked here.

conf/base is loaded with the project's config loader alone (no conf/local, no environment), so that
``${globals:outputs}`` resolves to conf/base's ``data``.
"""

from __future__ import annotations

from typing import Any

import pytest
from kedro.config import OmegaConfigLoader
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from evoprune import settings
from evoprune.core.finetune_config import FinetuneParams
from evoprune.core.report_table import ReportParams
from evoprune.pipelines.baselines.nodes import BaselinesParams
from evoprune.pipelines.build_exits.nodes import BuildExitsParams
from evoprune.pipelines.data_preparation.nodes import DataPreparationParams
from evoprune.pipelines.dst.nodes import DSTParams
from evoprune.pipelines.exit_search.nodes import ExitSearchParams
from evoprune.pipelines.hidden_state.nodes import HiddenStateParams
from evoprune.pipelines.latency_profile.nodes import LatencyProfileParams
from evoprune.pipelines.mask_search.nodes import MaskSearchParams
from evoprune.pipelines.scoring_net.nodes import ScoringNetParams
from evoprune.pipelines.train_dense.nodes import TrainDenseParams
from tests.conftest import PROJECT_ROOT

PARAMS_CLASSES = {
    "data_preparation": DataPreparationParams,
    "train_dense": TrainDenseParams,
    "build_exits": BuildExitsParams,
    "latency_profile": LatencyProfileParams,
    "mask_search": MaskSearchParams,
    "finetune": FinetuneParams,
    "baselines": BaselinesParams,
    "dst": DSTParams,
    "hidden_state": HiddenStateParams,
    "scoring_net": ScoringNetParams,
    "exit_search": ExitSearchParams,
    "report": ReportParams,
}


@pytest.fixture(scope="module")
def base_parameters() -> dict[str, Any]:
    loader = OmegaConfigLoader(str(PROJECT_ROOT / "conf"), env="base", **settings.CONFIG_LOADER_ARGS)
    return loader["parameters"]


def _leaves(value: Any, path: str) -> dict[str, Any]:
    value = value.model_dump(mode="json") if isinstance(value, BaseModel) else to_jsonable_python(value)
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in _leaves(sub, f"{path}.{key}").items()}
    return {path: value}


def default_mismatches(cls: type[BaseModel], conf: dict[str, Any], path: str) -> list[str]:
    """Each field default of ``cls`` (and of the classes of its required fields) that differs from ``conf``
    validated by ``cls``, as ``"<key>: code <default>, conf/base <value>"``."""
    validated = cls.model_validate(conf)
    out = []
    for name, field in type(validated).model_fields.items():
        value = getattr(validated, name)
        if field.is_required():
            if isinstance(value, BaseModel):
                out += default_mismatches(type(value), conf[name], f"{path}.{name}")
            continue
        code, base = (
            _leaves(field.get_default(call_default_factory=True), f"{path}.{name}"),
            _leaves(value, path + "." + name),
        )
        out += [
            f"{k}: code {code.get(k)!r}, conf/base {base.get(k)!r}"
            for k in {**code, **base}
            if code.get(k) != base.get(k)
        ]
    return out


def test_every_parameters_section_has_a_class(base_parameters):
    assert set(base_parameters) - {"seed", "device"} == set(PARAMS_CLASSES)


@pytest.mark.parametrize(
    "key",
    [
        "data_preparation",
        "train_dense",
        "build_exits",
        "mask_search",
        "finetune",
        "baselines",
        "hidden_state",
        "latency_profile",
    ],
)
def test_defaults_equal_conf_base(base_parameters, key):
    mismatches = default_mismatches(PARAMS_CLASSES[key], base_parameters[key], key)
    assert not mismatches, "defaults differ from conf/base:\n" + "\n".join(mismatches)


def test_a_changed_default_is_caught():
    conf = {"validation_subset": 2000, "candidates_per_budget": 3}
    assert default_mismatches(MaskSearchParams, conf, "mask_search") == [
        "mask_search.candidates_per_budget: code 2, conf/base 3"
    ]


ENVIRONMENTS = sorted(
    p.name for p in (PROJECT_ROOT / "conf").iterdir() if p.is_dir() and p.name not in {"base", "local"}
)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_every_environments_parameters_validate(env):
    """What ``kedro run --env=<env>`` reads (conf/base merged with the environment) passes every class's checks,
    e.g. conf/resnet's allocation seeds fit its population."""
    loader = OmegaConfigLoader(str(PROJECT_ROOT / "conf"), env=env, **settings.CONFIG_LOADER_ARGS)
    parameters = loader["parameters"]
    for key, cls in PARAMS_CLASSES.items():
        cls.model_validate(parameters[key])
    if env == "resnet":
        search = MaskSearchParams.model_validate(parameters["mask_search"]).search
        assert search.seed_allocations and search.allocation_budgets == [0.4] and search.max_pruning_ratio == 0.7
