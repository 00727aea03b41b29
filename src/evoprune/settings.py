"""Project settings (Kedro defaults unless noted)."""

from kedro.config import OmegaConfigLoader

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # An environment (conf/tiny, conf/vgg, conf/local) overrides only the keys it sets.
    "merge_strategy": {"parameters": "soft", "globals": "soft"},
    "config_patterns": {"globals": ["globals*", "globals*/**"]},
}

from evoprune.hooks import (  # noqa: E402
    ConfigConsistencyHook,
    MlflowRunStatusHook,
    ModelLineageHook,
    ProjectStartupHook,
    TypedParamsLoggingHook,
    VariantNamespacesHook,
)

# ProjectStartupHook runs first (tryfirst): project root as working directory, tracking store, device, folders.
HOOKS = (
    ProjectStartupHook(),
    ConfigConsistencyHook(),
    ModelLineageHook(),
    VariantNamespacesHook(),
    TypedParamsLoggingHook(),
    MlflowRunStatusHook(),
)
