"""A new bottleneck is one file: a sign quantizer defined in tests/sign_quantizer.py alone, registered by name, goes
through the real scripts (train, stop and resume, generate every mode, evaluate, export, a study row) without a change
to any other project file; and registered as docs/code.md says (its import and its line in modules.BOTTLENECKS, in a
copy of the project), it is a row of the bottleneck study from the command line."""
import contextlib
import io
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import study
import evaluate
import export_model
import generate
from helpers import TINY_PRIOR, signal_on_call, train_tiny, write_tiny_mnist
import modules
from sign_quantizer import SignQuantizer
from vqmnist.configuration.errors import RunStopped
import vqvae


@pytest.fixture
def sign_registered(monkeypatch):
    """The sign quantizer under the name "sign", as its one line in modules.BOTTLENECKS would register it."""
    monkeypatch.setitem(modules.BOTTLENECKS, "sign", SignQuantizer)


def test_the_toy_quantizer_embeds_the_codes_it_gives():
    quantizer = SignQuantizer(4, 0.1)
    z_e = torch.randn(3, 4, 7, 7)
    output = quantizer(z_e)
    assert torch.equal(quantizer.embed(output.codes), torch.sign(z_e))
    assert int(output.codes.max()) < 16


def test_a_bottleneck_defined_in_one_file_goes_through_every_script(sign_registered, tiny_mnist, tmp_path,
                                                                    monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    flags = ("--bottleneck", "sign", "--sign-bits", "4", "--num-epochs", "2")
    # Trained, stopped by SIGTERM at its third step, and resumed.
    with monkeypatch.context() as patch:
        signal_on_call(patch, torch.optim.Adam, "step", 3, signal.SIGTERM)
        with pytest.raises(RunStopped, match="at step 3"):
            train_tiny(tiny_mnist, *flags, bottleneck=None)
    train_tiny(tiny_mnist, *flags, "--resume", bottleneck=None)
    best = tmp_path / "models" / "tiny" / "best.pt"
    checkpoint = torch.load(best, weights_only=True)
    assert checkpoint["config"]["bottleneck"] == "sign" and checkpoint["config"]["bottleneck_config"] == {
        "sign_bits": 4, "sign_commitment": 0.1}
    assert checkpoint["epoch"] == 2 and "prior" in checkpoint
    figures = json.loads((tmp_path / "models" / "tiny" / "run.json").read_text())["autoencoder"]["epochs"][-1]
    assert figures["codes_used"] <= 16 and "loss_commitment" in figures and figures["perplexity"] >= 1
    capsys.readouterr()

    # Every mode of generate.py, the codes out and back in.
    for mode in ("MNIST", "random", "noise"):
        generate.main(generate.build_parser().parse_args(["--model", str(best), "--input", mode, "--data-folder",
                                                          str(tiny_mnist), "--save-codes", f"{mode}.npy"]))
        codes = np.load(f"{mode}.npy")
        assert codes.shape == (100, 7, 7) and codes.max() < 16
    generate.main(generate.build_parser().parse_args(["--model", str(best), "--input", "codes", "--codes",
                                                      "random.npy", "--filename", "decoded"]))
    assert (tmp_path / "generatedImages" / "decoded.png").is_file()
    capsys.readouterr()

    # The scorecard, with the figures the sign quantizer reports.
    evaluate.main(evaluate.build_parser().parse_args(["--model", str(best), "--json", "--data-folder", str(tiny_mnist),
                                                      "--samples", "70"]))
    report = json.loads(capsys.readouterr().out)
    assert report["bottleneck"] == "sign" and report["num_embeddings"] == 16 and report["codes_used"] <= 16
    assert report["rate_bits"] > 0 and {"prior_conditional", "prior_unconditional"} <= set(report["samples"])

    export_model.main(export_model.build_parser().parse_args(["--model", str(best), "--output", "sign.pt"]))
    assert torch.load("sign.pt", weights_only=True)["config"]["bottleneck"] == "sign"


def test_a_bottleneck_defined_in_one_file_is_a_study_row(sign_registered, tiny_mnist, tmp_path, monkeypatch):
    """study.py runs vqvae.py and evaluate.py as scripts; here they run in this process, where "sign" is
    registered, so the row is the study's own code from its command lines to its table."""
    monkeypatch.setattr(study, "ROOT", tmp_path)
    monkeypatch.chdir(tmp_path)

    def run_in_process(command: list[str]) -> str:
        script = {"vqvae.py": vqvae, "evaluate.py": evaluate}[command[0]]
        extra = ["--data-folder", str(tiny_mnist)]
        if script is vqvae and "--resume" not in command:
            extra += ["--val-size", "64", "--hidden-size", "8", "--prior-width", "16", "--prior-layers", "1",
                      "--prior-heads", "2", "--prior-batch-size", "64"]
        with contextlib.redirect_stdout(io.StringIO()) as output:
            script.main(script.build_parser().parse_args(command[1:] + extra))
        return output.getvalue()

    monkeypatch.setattr(study, "run_script", run_in_process)
    row = study.Row("sign quantizer, 4 bits", "sign4", ("--bottleneck", "sign", "--sign-bits", "4"), "VQ")
    args = study.build_parser().parse_args(["--study", "k", "--epochs", "1", "--prior-epochs", "1", "--samples", "70"])
    scores = study.train_and_score(row, args)
    assert scores["bottleneck"] == "sign" and scores["num_embeddings"] == 16
    line = study.table([row], [scores])[2]
    assert line.startswith(f"| sign quantizer, 4 bits | {scores['test_mse']:.5f} |") and "/16 |" in line


ROOT = Path(__file__).resolve().parent.parent
REGISTRY_IMPORT = "from residual_vq import ResidualVectorQuantizer\n"
REGISTRY_LINE = '    "rvq": ResidualVectorQuantizer,\n'


def registered_in_a_copy(project: Path) -> None:
    """The project copied to `project`, the sign quantizer's file beside the others and registered as docs/code.md
    says: its import, and its line in modules.BOTTLENECKS."""
    shutil.copytree(ROOT, project, ignore=shutil.ignore_patterns(".git", "data", "models", "logs", "generatedImages",
                                                                 "docs", "notebooks", "vqvae_mnist.pt", "__pycache__"))
    shutil.copy(ROOT / "tests" / "sign_quantizer.py", project / "sign_quantizer.py")
    modules_file = project / "modules.py"
    source = modules_file.read_text()
    assert REGISTRY_IMPORT in source and REGISTRY_LINE in source, "docs/code.md's two lines no longer fit modules.py"
    modules_file.write_text(source.replace(REGISTRY_IMPORT, REGISTRY_IMPORT + "from sign_quantizer import SignQuantizer\n")
                            .replace(REGISTRY_LINE, REGISTRY_LINE + '    "sign": SignQuantizer,\n'))


def test_a_bottleneck_registered_as_the_docs_say_is_a_study_row_from_the_command_line(tmp_path):
    project, own = tmp_path / "project", tmp_path / "own"
    registered_in_a_copy(project)
    write_tiny_mnist(own)
    out = tmp_path / "tables"
    tiny = ["--val-size", "64", "--batch-size", "64", "--hidden-size", "8", *TINY_PRIOR[2:]]
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.study", "--study", "bottleneck", "--bottlenecks", "vq,sign", "--epochs", "1",
         "--prior-epochs", "1", "--samples", "70", "--data-folder", str(own), "--dataset", "own", "--train-flags",
         " ".join(tiny), "--out-dir", str(out)], cwd=project, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    table = (out / "study_bottleneck.md").read_text().splitlines()
    assert table[2].startswith("| default VQ (EMA, k-means++, restarts) |") and table[2].count("/512 |") == 1
    assert table[3].startswith("| sign at its defaults |") and "/16 |" in table[3]
    assert (out / "study_bottleneck.png").stat().st_size > 0
    scores = json.loads(next((project / "models" / "study").glob("sign-e1-p1-s0-x*/scores.json")).read_text())
    assert scores["bottleneck"] == "sign" and scores["dataset"] == "own" and scores["rate_bits"] > 0


def test_every_row_of_a_study_has_a_marker_and_one_without_a_rate_is_named():
    rows = study.bottleneck_rows(["vq", "fsq", "gaussian"]) + [study.Row("mine", "mine", (), "mine"),
                                                               study.Row("yours", "yours", (), "yours")]
    styles = study.marker_styles(rows)
    assert set(styles) == {"VQ", "FSQ", "Gaussian", "mine", "yours"}
    assert styles["VQ"] == study.MARKERS["VQ"] and styles["mine"][0] != styles["yours"][0]
    assert styles["mine"][0] not in {marker for marker, _, _ in study.MARKERS.values()}
