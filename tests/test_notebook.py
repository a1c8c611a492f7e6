"""notebooks/quickstart.ipynb runs top to bottom (nbclient) on CPU in its tiny mode: no network, few steps."""
import os

import pytest

from conftest import FAST_COMPILE, ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")


def test_quickstart_notebook_runs_in_tiny_mode(tmp_path, monkeypatch, data_dir):
  monkeypatch.setenv("VISION_NOTEBOOK_TINY", "1")
  monkeypatch.setenv("VISION_NOTEBOOK_WORKDIR", str(tmp_path))
  monkeypatch.setenv("TFDS_DATA_DIR", data_dir)
  monkeypatch.setenv("XLA_FLAGS", FAST_COMPILE)  # one CPU device, quick compiles
  nb = nbformat.read(os.path.join(ROOT, "notebooks", "quickstart.ipynb"), as_version=4)
  nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}}).execute()
  text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
  assert "tiny mode: True" in text and "1 x cpu" in text and "lenet5 on digits" in text
  assert "test top-1" in text and "360 images: top-1" in text
  assert "logits (8, 1000)" in text
  pictures = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
  assert pictures  # the training curves and the confusion matrix
  assert os.path.isdir(tmp_path / "weights" / "resnet18_converted" / "checkpoints" / "0")
