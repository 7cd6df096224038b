"""The speed settings of the training step change nothing but speed: channels-last gives float64's losses and gradients
(up to rounding), fused Adam the same steps, and glibc keeps freed memory after machine.keep_freed_memory; bf16
autocast is on by default where the hardware computes bf16."""
import copy
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import blob_images, model_config, train_tiny
from modules import VQVAE
from pixel_distributions import images_to_inputs
from vqmnist.running.autoencoder_task import make_optimizer
from vqmnist.running.machine import native_bf16
import vqvae

ROOT = Path(__file__).resolve().parent.parent

FREE_HEAP_AFTER_A_FREE = """
import ctypes, sys
import torch
from vqmnist.running import machine

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2
if sys.argv[1] == "keep":
    machine.keep_freed_memory()
block = torch.empty(16 << 20, dtype=torch.uint8)
del block
print(libc.mallinfo2().fordblks)
"""


def losses_and_gradients(model: VQVAE, images: torch.Tensor, dtype=torch.float32) -> dict:
    """The training loss, code indices and every parameter's gradient after one training forward and backward."""
    torch.manual_seed(0)  # the codebook's k-means++ initialisation draws random numbers
    x = images_to_inputs(images).to(dtype)
    x_recon, quantized = model(x)
    loss = model.reconstruction_loss(x_recon, x) + quantized.losses["commitment"]
    loss.backward()
    return {"loss": loss.detach().double(), "indices": quantized.codes,
            **{name: parameter.grad.double() for name, parameter in model.named_parameters()
               if parameter.grad is not None}}


@pytest.mark.parametrize("hidden_size, code_dim", [(16, 4), (8, 8)])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_memory_format_computes_what_float64_computes(memory_format, hidden_size, code_dim):
    """Either memory format gives the float64 loss, codes and gradients, up to float32 rounding. Channels-last
    BatchNorm sums its batch statistics in another order: on these images, whose background is far from the mean,
    its gradients are about 1% off float64 (contiguous: 1e-5), less than a bf16 autocast changes."""
    torch.manual_seed(1)
    model = VQVAE(model_config(hidden_size=hidden_size, num_embeddings=32, code_dim=code_dim))
    images = blob_images(32, seed=3)
    expected = losses_and_gradients(copy.deepcopy(model).double(), images, torch.float64)
    converted = copy.deepcopy(model).to(memory_format=memory_format)
    actual = losses_and_gradients(converted, images)
    assert converted.encoder.layers[3].weight.grad.is_contiguous(memory_format=memory_format)
    assert torch.equal(expected.pop("indices"), actual.pop("indices"))
    assert expected.keys() == actual.keys()
    assert torch.allclose(actual.pop("loss"), expected.pop("loss"), rtol=1e-5, atol=0)
    for name, gradient in expected.items():
        if gradient.norm() > 1e-12:  # the biases before a BatchNorm get none
            assert (actual[name] - gradient).norm() <= 0.03 * gradient.norm(), name


def test_fused_adam_takes_the_same_steps():
    torch.manual_seed(1)
    model = VQVAE(model_config(hidden_size=8, num_embeddings=32, code_dim=4))
    # The same gradients for both: recomputed ones would differ by rounding, which Adam turns into whole steps
    # for the biases before a BatchNorm, whose true gradient is 0.
    gradients = [{name: torch.randn_like(parameter) for name, parameter in model.named_parameters()}
                 for _ in range(3)]
    updated = []
    for fused in (False, True):
        trained = copy.deepcopy(model)
        optimizer = make_optimizer(trained, lr=1e-3, fused=fused)
        for step_gradients in gradients:
            for name, parameter in trained.named_parameters():
                parameter.grad = step_gradients[name].clone() if parameter.requires_grad else None
            optimizer.step()
        updated.append(trained.state_dict())
    for name, value in updated[0].items():
        assert torch.allclose(value, updated[1][name], rtol=0, atol=1e-6), name
    moved = [name for name, value in updated[0].items() if not torch.equal(value, model.state_dict()[name])]
    assert "encoder.layers.0.weight" in moved and "bottleneck.embedding.weight" not in moved


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="keep_freed_memory tunes glibc's malloc")
@pytest.mark.parametrize("mode, kept", [("keep", True), ("default", False)])
def test_freed_activations_stay_in_the_heap(mode, kept):
    """A freed 16 MB tensor stays in malloc's heap for the next step, instead of going back to the kernel."""
    free_bytes = int(subprocess.run([sys.executable, "-c", FREE_HEAP_AFTER_A_FREE, mode], cwd=ROOT, check=True,
                                    capture_output=True, text=True).stdout)
    assert (free_bytes >= 16 << 20) == kept, free_bytes


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, True), (False, True, True), (False, False, False)])
def test_native_bf16_on_the_cpu_needs_avx512_bf16_or_amx(avx512_bf16, amx, expected, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert native_bf16(torch.device("cpu")) is expected


@pytest.mark.parametrize("native", [True, False])
def test_amp_is_on_by_default_where_bf16_is_native(native, tiny_mnist, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(vqvae, "native_bf16", lambda device: native)
    train_tiny(tiny_mnist, "--prior-epochs", "0")
    assert torch.load("models/tiny/last.pt", weights_only=True)["args"]["amp"] is native
    assert ("in bf16 autocast" in capsys.readouterr().out) is native
    train_tiny(tiny_mnist, "--prior-epochs", "0", "--overwrite", "--no-amp" if native else "--amp")  # the flag wins
    assert torch.load("models/tiny/last.pt", weights_only=True)["args"]["amp"] is not native
