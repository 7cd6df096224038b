"""The CUDA path: a training step and short runs on --device cuda (bf16 autocast, channels-last on and off,
--compile), the quantizer's fp32 distances under autocast, checkpoints moved between CUDA and the CPU, --resume, and
no host sync in the training step. Each test that can also run on the CPU does, so the check itself is known to work;
the CUDA ones skip cleanly without a GPU (benchmarks/gpu_check.py runs them where there is one)."""
import json
import signal

import pytest
import torch

import evaluate
import generate
from helpers import model_config, signal_on_call, train_tiny
from modules import VQVAE
from testers import brute_force_nearest, random_inputs, random_quantizer
from vqmnist.checkpoints.loading import load_model
from vqmnist.configuration import training_flags
from vqmnist.configuration.errors import RunStopped, UserError
from vqmnist.running.autoencoder_task import make_optimizer, training_step
import vqvae

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
DEVICES = ["cpu", pytest.param("cuda", marks=[needs_cuda, pytest.mark.cuda])]


def tiny_batch(device: str) -> torch.Tensor:
    return torch.randint(0, 256, (16, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_a_training_step_lowers_nothing_to_nan_and_moves_the_weights(device, amp, channels_last):
    torch.manual_seed(0)
    model = VQVAE(model_config(hidden_size=8, num_embeddings=16, code_dim=4)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, 1e-3)
    before = {name: value.detach().clone() for name, value in model.named_parameters()}
    values = training_step(model, optimizer, tiny_batch(device), amp=amp)
    assert all(value.device.type == device and torch.isfinite(value) for value in values.values())
    assert any(not torch.equal(before[name], value) for name, value in model.named_parameters())


@needs_cuda
@pytest.mark.cuda
def test_the_training_step_makes_no_host_sync():
    """torch.cuda.set_sync_debug_mode("error") turns any sync with the host (an .item(), a bincount, a nonzero) into
    an error: the step must queue its work and return without waiting for the GPU."""
    torch.manual_seed(0)
    model = VQVAE(model_config(hidden_size=8, num_embeddings=16, code_dim=4)).cuda()
    optimizer = make_optimizer(model, 1e-3)
    images = tiny_batch("cuda")
    training_step(model, optimizer, images, amp=True)  # the first step initialises the codebook, with syncs
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            training_step(model, optimizer, images, amp=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("device", DEVICES)
def test_the_vq_distances_stay_fp32_under_autocast(device):
    quantizer = random_quantizer(64, 8).to(device).eval()
    z_e = random_inputs(4, 8, 7, 7).to(device)
    # The codes of the inputs as autocast hands them over (bf16), found in float64 over every pair.
    _, expected = brute_force_nearest(z_e.bfloat16().float().cpu(), quantizer.codebook().detach().cpu())
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        codes = quantizer(z_e.bfloat16()).codes
    assert torch.equal(codes.cpu(), expected)


def run_scripts(tiny_mnist, model_path, device, capsys) -> dict:
    """generate.py (test digits and prior samples) and evaluate.py on model_path, on device; the scorecard."""
    for mode in ("MNIST", "random"):
        generate.main(generate.build_parser().parse_args(["--model", str(model_path), "--input", mode, "--device",
                                                          device, "--data-folder", str(tiny_mnist)]))
    capsys.readouterr()
    evaluate.main(evaluate.build_parser().parse_args(["--model", str(model_path), "--device", device, "--json",
                                                      "--samples", "70", "--data-folder", str(tiny_mnist)]))
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("trained_on", DEVICES)
@pytest.mark.parametrize("flags", [[], ["--no-channels-last", "--no-amp"]])
def test_a_short_run_then_generate_and_evaluate_on_both_devices(trained_on, flags, tiny_mnist, tmp_path, monkeypatch,
                                                                capsys):
    monkeypatch.chdir(tmp_path)
    train_tiny(tiny_mnist, "--device", trained_on, *flags)
    best = tmp_path / "models" / "tiny" / "best.pt"
    scores = {device: run_scripts(tiny_mnist, best, device, capsys)
              for device in ("cpu", "cuda") if device == "cpu" or torch.cuda.is_available()}
    if "cuda" in scores:  # one model, two devices: the same reconstructions up to the devices' rounding
        assert scores["cuda"]["test_mse"] == pytest.approx(scores["cpu"]["test_mse"], rel=1e-3)
    model = load_model(best, "cpu").model
    assert next(model.parameters()).device.type == "cpu"


@needs_cuda
@pytest.mark.cuda
def test_compile_on_cuda_trains_and_stores_the_plain_weights(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_tiny(tiny_mnist, "--device", "cuda", "--compile", "--prior-epochs", "0")
    checkpoint = torch.load(tmp_path / "models" / "tiny" / "last.pt", weights_only=True, map_location="cpu")
    assert not any(name.startswith("_orig_mod") for name in checkpoint["model"])


@pytest.mark.parametrize("device", DEVICES)
def test_resume_on_the_device_ends_where_the_unbroken_run_does(device, tiny_mnist, tmp_path, monkeypatch):
    flags = ("--device", device, "--num-epochs", "2", "--prior-epochs", "0")
    monkeypatch.chdir(tmp_path)
    train_tiny(tiny_mnist, *flags, "--output-folder", "unbroken")
    with monkeypatch.context() as patch:
        signal_on_call(patch, torch.optim.Adam, "step", 6, signal.SIGTERM)  # in the second epoch
        with pytest.raises(RunStopped):
            train_tiny(tiny_mnist, *flags, "--output-folder", "stopped")
    train_tiny(tiny_mnist, *flags, "--output-folder", "stopped", "--resume")
    unbroken, resumed = (torch.load(tmp_path / "models" / name / "last.pt", weights_only=True, map_location="cpu")
                         ["model"] for name in ("unbroken", "stopped"))
    for name, tensor in unbroken.items():
        assert torch.equal(tensor, resumed[name]), name


def test_cuda_is_refused_in_one_line_where_there_is_none(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(UserError, match="CUDA is not available"):
        vqvae.main(training_flags.build_parser().parse_args(["--device", "cuda"]))
