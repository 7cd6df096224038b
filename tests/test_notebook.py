"""notebooks/tour.ipynb runs top to bottom: on the tiny MNIST files, with the training run's sizes made tiny through
its parameter cell, as CI runs it (tests of the notebook's own outputs are the scripts' tests)."""
import json
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from helpers import TINY_PRIOR, write_tiny_mnist

ROOT = Path(__file__).resolve().parent.parent
TOUR = ROOT / "notebooks" / "tour.ipynb"
BUDGET_SECONDS = 90


def test_the_tour_runs_top_to_bottom_on_tiny_data(tmp_path):
    notebook = nbformat.read(TOUR, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
        "the notebook is committed without outputs"
    parameters = next(index for index, cell in enumerate(notebook.cells)
                      if "parameters" in cell.metadata.get("tags", []))
    checksums = write_tiny_mnist(tmp_path / "data" / "MNIST" / "raw")
    tiny = ["--val-size", "64", "--batch-size", "64", "--hidden-size", "8", "--k", "16", *TINY_PRIOR[2:]]
    # As papermill does: a cell after the parameters that sets them, here with the tiny files' checksums.
    notebook.cells.insert(parameters + 1, nbformat.v4.new_code_cell(
        f"REPOSITORY_ROOT = {str(ROOT)!r}\nDATA_FOLDER = {str(tmp_path / 'data')!r}\nSAMPLES = 70\n"
        f"SHOW_TENSORBOARD = False\nEXTRA_FLAGS = {tiny!r}\n"
        f"import sys\nsys.path.insert(0, REPOSITORY_ROOT)\nfrom vqmnist import data\n"
        f"data.MNIST_MD5 = {json.dumps(checksums)}"))
    started = time.perf_counter()
    NotebookClient(notebook, timeout=BUDGET_SECONDS, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    seconds = time.perf_counter() - started
    outputs = "".join(output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", []))
    assert "models/tour/best.pt" in outputs and "MNIST test set" in outputs, "the run trained and was scored"
    assert (tmp_path / "generatedImages" / "tour_curves.png").is_file()
    print(f"the tour ran in {seconds:.0f} s")
