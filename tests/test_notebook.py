"""The exploration notebook runs top to bottom on the artifacts of a real (tiny) `prune` run."""

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "explore_prune_run.ipynb"


def test_notebook_executes_on_a_finished_run(tiny_project, monkeypatch):
    # `kedro run` in its own process, as a user would (and MLflow's process-wide state stays untouched)
    kedro = Path(sys.executable).with_name("kedro")
    run = subprocess.run(
        [str(kedro), "run", "--pipeline=prune", "--env=tiny"], cwd=tiny_project, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
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
