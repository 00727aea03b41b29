"""The exploration notebook runs top to bottom on the artifacts of a real (tiny) `prune` run."""

from pathlib import Path

import nbformat
import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from nbclient import NotebookClient

pytestmark = pytest.mark.slow
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "explore_prune_run.ipynb"


def test_notebook_executes_on_a_finished_run(tiny_project, monkeypatch):
    bootstrap_project(tiny_project)
    with KedroSession.create(project_path=tiny_project, env="tiny") as session:
        session.run(pipeline_names=["prune"])
    monkeypatch.setenv("KEDRO_ENV", "tiny")  # inherited by the kernel
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": tiny_project}}
    ).execute()
    printed = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert f"project: {tiny_project}" in printed
    assert "mean accuracy drop over members, by variant" in printed
    assert printed.count("ONNX max |diff|") >= 1
    diffs = [float(line.rsplit(" ", 1)[1]) for line in printed.splitlines() if "ONNX max |diff|" in line]
    assert max(diffs) < 1e-3  # the exported file computes what the pruned module computes
