"""notebooks/colab_tpu_demo.ipynb, executed whole on CPU at a tiny size (its TINY setting), so it cannot rot."""

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # a kernel, a training run and an export: `python -m pytest -q -m slow tests`
def test_colab_notebook_runs_end_to_end(tmp_path, monkeypatch):
  import nbclient  # pylint: disable=g-import-not-at-top
  import nbformat  # pylint: disable=g-import-not-at-top
  notebook = nbformat.read(os.path.join(REPO, "notebooks", "colab_tpu_demo.ipynb"), as_version=4)
  monkeypatch.setenv("CONPREDIFF_NOTEBOOK_TINY", "1")  # the kernel inherits this process's environment
  monkeypatch.setenv("CONPREDIFF_NOTEBOOK_WORKDIR", str(tmp_path / "run"))
  nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": os.path.join(REPO, "notebooks")}}).execute()
  outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  shown = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
  assert len(shown) == 3  # the sample grid, the loss curve, the chosen digit
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert "samples of 7, shape (8, 8, 8, 1)" in text and "unet" in text and "backend cpu" in text
  assert (tmp_path / "run" / "export" / "unet").is_dir() and (tmp_path / "run" / "digit_7.png").exists()
