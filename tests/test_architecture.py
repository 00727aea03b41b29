"""The core package stays framework-free."""

import subprocess
import sys


def test_core_imports_neither_kedro_nor_mlflow():
    code = (
        "import sys, pkgutil, importlib, evoprune.core as core\n"
        "for m in pkgutil.walk_packages(core.__path__, 'evoprune.core.'): importlib.import_module(m.name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'kedro', 'mlflow', 'kedro_mlflow'})\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"evoprune.core imported {result.stdout.strip()} {result.stderr[-500:]}"
