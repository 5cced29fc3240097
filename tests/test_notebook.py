"""The practical (notebooks/practical.py) runs from top to bottom as a notebook, with short training."""

import importlib.util
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")
if importlib.util.find_spec("ipykernel") is None:  # not imported here: that would make pytest look like a kernel
    pytest.skip("ipykernel is not installed", allow_module_level=True)

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "practical.py"


def test_practical_notebook_runs(tmp_path, monkeypatch):
    # The kernel inherits this environment: 30 training steps, a 100-step schedule, files in tmp_path.
    monkeypatch.setenv("DDPM_NOTEBOOK_STEPS", "30")
    monkeypatch.setenv("DDPM_NOTEBOOK_T", "100")
    monkeypatch.setenv("DDPM_NOTEBOOK_OUT", str(tmp_path / "out"))
    nb = jupytext.read(NOTEBOOK)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 8  # the figures were drawn inline
    assert (tmp_path / "out" / "trajectory.gif").stat().st_size > 0
    assert (tmp_path / "out" / "cli_samples" / "samples.npz").exists()
