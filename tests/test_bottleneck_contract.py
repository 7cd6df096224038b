"""What the interface promises of every registered bottleneck, checked on each: under bf16 autocast, in eval mode, the
z_q it gives is exactly embed(codes), so a decoded code grid is the picture its reconstruction was."""
import copy
import functools

import pytest
import torch

from modules import BOTTLENECKS, VQVAE, VQVAEConfig

DISCRETE = [name for name, bottleneck in BOTTLENECKS.items() if bottleneck.discrete]


@functools.cache
def first_step(name: str) -> VQVAE:
    """trained_a_step's model, made once for the fp32 and the autocast case: a k-means++ codebook of the default K
    takes seconds on a CPU."""
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(bottleneck=name, hidden_size=16))
    model(torch.rand(64, 1, 28, 28) * 2 - 1)
    return model.eval()


def trained_a_step(name: str) -> VQVAE:
    """The default model of bottleneck `name` after one training forward pass (which sets up a k-means++ codebook),
    a copy of its own for each test."""
    return copy.deepcopy(first_step(name))


def test_every_registered_bottleneck_is_checked_here():
    assert DISCRETE and set(DISCRETE) | {name for name, b in BOTTLENECKS.items() if not b.discrete} == set(BOTTLENECKS)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("name", DISCRETE)
def test_in_eval_mode_z_q_is_embed_of_the_codes(name, autocast):
    model = trained_a_step(name)
    images = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        z_e = model.to_code_space(model.encoder(images))  # (8, D, 7, 7), bf16 under autocast
        output = model.bottleneck(z_e)
        embedded = model.bottleneck.embed(output.codes)
    assert z_e.dtype == (torch.bfloat16 if autocast else torch.float32)
    assert output.z_q.shape == embedded.shape == (8, model.bottleneck.code_dim, 7, 7)
    assert torch.equal(output.z_q.float(), embedded.float())
    # So decoding the codes gives the reconstruction's picture to the bit.
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        assert torch.equal(model.decode(output.codes), model(images).x_recon)
