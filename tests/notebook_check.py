"""The exploration notebook, executed top to bottom on the artifacts of a finished (tiny) `prune` run; the
check runs inside ``tests/test_prune_session.py::test_prune_run_is_tracked_in_mlflow`` (one run serves both)."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "explore_prune_run.ipynb"


def assert_notebook_explores(project: Path) -> None:
    """Executes the notebook in ``project`` (its kernel reads ``KEDRO_ENV``, which the caller sets) and checks
    what it prints: the project, the variant comparison, and exported ONNX files that compute what the pruned
    modules compute."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": project}}).execute()
    printed = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert f"project: {project}" in printed
    assert "mean accuracy drop over members, by variant" in printed
    assert printed.count("ONNX max |diff|") >= 1
    diffs = [float(line.rsplit(" ", 1)[1]) for line in printed.splitlines() if "ONNX max |diff|" in line]
    assert max(diffs) < 1e-3  # the exported file computes what the pruned module computes
