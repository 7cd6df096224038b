"""notebooks/tour.ipynb runs top to bottom: on the tiny MNIST files, with the training run's sizes made tiny through
its parameter cell, as CI runs it (tests of the notebook's own outputs are the scripts' tests)."""
import json
import shutil
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from helpers import TINY_PRIOR, tiny_run_in, write_tiny_mnist

ROOT = Path(__file__).resolve().parent.parent
TOUR = ROOT / "notebooks" / "tour.ipynb"
BUDGET_SECONDS = 90


def run_tour(folder: Path, model: str | None = None) -> str:
    """Execute the tour in folder on the tiny MNIST files, with the training run's sizes made tiny through its
    parameter cell (and MODEL, if given, another checkpoint); returns what its cells printed."""
    notebook = nbformat.read(TOUR, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
        "the notebook is committed without outputs"
    parameters = next(index for index, cell in enumerate(notebook.cells)
                      if "parameters" in cell.metadata.get("tags", []))
    checksums = write_tiny_mnist(folder / "data" / "MNIST" / "raw")
    tiny = ["--val-size", "64", "--batch-size", "64", "--hidden-size", "8", "--k", "16", *TINY_PRIOR[2:]]
    # As papermill does: a cell after the parameters that sets them, here with the tiny files' checksums.
    notebook.cells.insert(parameters + 1, nbformat.v4.new_code_cell(
        f"REPOSITORY_ROOT = {str(ROOT)!r}\nDATA_FOLDER = {str(folder / 'data')!r}\nSAMPLES = 70\n"
        f"SHOW_TENSORBOARD = False\nEXTRA_FLAGS = {tiny!r}\n" + (f"MODEL = {model!r}\n" if model else "") +
        f"import sys\nsys.path.insert(0, REPOSITORY_ROOT)\nfrom vqmnist.io import data\n"
        f"data.MNIST_MD5 = {json.dumps(checksums)}"))
    started = time.perf_counter()
    NotebookClient(notebook, timeout=BUDGET_SECONDS, kernel_name="python3",
                   resources={"metadata": {"path": str(folder)}}).execute()
    print(f"the tour ran in {time.perf_counter() - started:.0f} s")
    return "".join(output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", []))


def test_the_tour_runs_top_to_bottom_on_tiny_data(tmp_path):
    outputs = run_tour(tmp_path)
    assert "models/tour/best.pt" in outputs and "MNIST test set" in outputs, "the run trained and was scored"
    assert (tmp_path / "generatedImages" / "tour_curves.png").is_file()


def test_the_tour_keeps_an_earlier_run_of_its_name_and_reads_a_residual_vq_model(tmp_path):
    rvq = tiny_run_in(tmp_path / "rvq", "--prior-epochs", "1", bottleneck="rvq") / "models" / "tiny" / "best.pt"
    earlier = tiny_run_in(tmp_path / "earlier", "--num-epochs", "2", "--prior-epochs", "2")  # the tour's own flags
    for kind in ("models", "logs"):
        shutil.copytree(earlier / kind / "tiny", tmp_path / kind / "tour")
    kept = {path.name: path.read_bytes() for path in (tmp_path / "models" / "tour").glob("*.pt")}
    outputs = run_tour(tmp_path, model=str(rvq))
    assert "already finished its 2 epochs" in outputs and "MNIST test set" in outputs
    assert {path.name: path.read_bytes() for path in (tmp_path / "models" / "tour").glob("*.pt")} == kept, \
        "the tour replaced the earlier run"
