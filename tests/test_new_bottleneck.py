"""A new bottleneck is one file: a sign quantizer defined here alone, registered by name, goes through the real scripts
(train, stop and resume, generate every mode, evaluate, export, a study row) without a change to any project file."""
import argparse
import contextlib
import io
import json
import signal
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import evaluate
import export_model
import generate
import modules
import vqvae
from benchmarks import study
from helpers import signal_on_call, train_tiny
from vqmnist.bottleneck import Bottleneck, BottleneckOutput, code_counts, option, perplexity_from_counts
from vqmnist.errors import RunStopped


def sign_bits(text: str) -> int:
    bits = int(text)
    if not 1 <= bits <= 12:
        raise argparse.ArgumentTypeError(f"must be from 1 to 12, got {text}")
    return bits


@dataclass
class SignConfig:
    sign_bits: int = option(4, "--sign-bits", "sign: dimensions, each quantised to its sign; K = 2^bits (default: 4)",
                            type=sign_bits)
    sign_commitment: float = option(0.1, "--sign-commitment", "sign: weight of the pull towards +-1 (default: 0.1)",
                                    type=float)


class SignQuantizer(Bottleneck):
    """Each dimension of z_e becomes its sign, +1 or -1, with the straight-through estimator; the code is the
    dimensions' bits read as a binary number."""

    Config = SignConfig

    def __init__(self, bits: int, commitment: float):
        super().__init__()
        self.input_dim = self.code_dim = bits
        self.num_embeddings = 2 ** bits
        self.commitment = commitment
        self.register_buffer("powers", 2 ** torch.arange(bits).view(1, -1, 1, 1), persistent=False)

    @classmethod
    def dims(cls, config: SignConfig, hidden_size: int) -> tuple[int, int]:
        return config.sign_bits, config.sign_bits

    @classmethod
    def from_config(cls, config: SignConfig, hidden_size: int) -> "SignQuantizer":
        return cls(config.sign_bits, config.sign_commitment)

    def forward(self, z_e: Tensor) -> BottleneckOutput:
        signs = torch.where(z_e >= 0, 1.0, -1.0).to(z_e.dtype)
        codes = ((signs > 0).long() * self.powers).sum(1)  # (B, bits, H, W) -> (B, H, W)
        counts = code_counts(codes, self.num_embeddings)
        return BottleneckOutput(z_q=z_e + (signs - z_e).detach(), codes=codes,
                                losses={"commitment": self.commitment * F.mse_loss(z_e.float(), signs.float())},
                                figures={"perplexity": perplexity_from_counts(counts)})

    def embed(self, codes: Tensor) -> Tensor:
        return torch.where(codes.unsqueeze(1) // self.powers % 2 == 1, 1.0, -1.0)


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
