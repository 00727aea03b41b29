"""The science of evoprune: data, models, training and cost accounting.

This package imports torch, numpy, pydantic and (later) pymoo and torch-pruning, never Kedro or
MLflow, so it runs anywhere torch does (a GPU box without Kedro included).
"""
