"""SimVQ against answers computed another way: the nearest code by brute force over C = B W^T + b written out, the
codebook loss's gradient to W by autograd on the loss written out, the commitment loss and the straight-through
gradient by hand; the frozen basis; and the config, whose shared fields are the VQ's."""
import math
from dataclasses import fields

import pytest
import torch
import torch.nn.functional as F

from nearest_code import ESTIMATORS
from options import MAX_CODES
from simvq import SimVQ, SimVQConfig
from vector_quantizer import VQConfig

K, D = 37, 6


def simvq(beta: float = 0.25, estimator: str = "straight-through", seed: int = 0) -> SimVQ:
    torch.manual_seed(seed)
    return SimVQ(K, D, beta, estimator)


def inputs(seed: int = 1) -> torch.Tensor:
    """z_e (4, D, 5, 5), its values exact in bf16 so that autocast sees the same inputs."""
    return torch.randn(4, D, 5, 5, generator=torch.Generator().manual_seed(seed)).bfloat16().float()


def codes_by_hand(quantizer: SimVQ) -> torch.Tensor:
    """C = B W^T + b (K, D), written out from the basis and the linear layer's weights."""
    return quantizer.basis @ quantizer.projection.weight.detach().T + quantizer.projection.bias.detach()


def flat(z: torch.Tensor) -> torch.Tensor:
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (B, D, H, W) -> (B*H*W, D)


def test_the_codes_are_the_nearest_rows_of_the_mapped_basis_by_brute_force():
    quantizer, z = simvq(), inputs()
    codebook = codes_by_hand(quantizer)
    brute_force = torch.cdist(flat(z), codebook).argmin(1)  # over the full (N, K) distance matrix
    assert not torch.equal(brute_force, torch.cdist(flat(z), quantizer.basis).argmin(1)), "W makes no difference"
    output = quantizer(z)
    assert output.codes.shape == (4, 5, 5) and output.codes.dtype == torch.int64
    assert torch.equal(output.codes.flatten(), brute_force)
    assert torch.allclose(flat(output.z_q), codebook[brute_force], atol=1e-6)
    counts = torch.bincount(brute_force, minlength=K).double() / len(brute_force)
    expected_perplexity = math.exp(-(counts[counts > 0] * counts[counts > 0].log()).sum().item())
    assert output.figures["perplexity"].item() == pytest.approx(expected_perplexity, rel=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the search and the losses stay in fp32
        mixed = quantizer(z.bfloat16())
    assert torch.equal(mixed.codes, output.codes)
    assert all(loss.dtype == torch.float32 for loss in mixed.losses.values())


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_the_basis_is_frozen_and_w_learns_from_the_codebook_loss_alone(estimator):
    quantizer = simvq(estimator=estimator)
    basis = quantizer.basis.clone()
    assert "basis" in quantizer.state_dict() and not quantizer.basis.requires_grad
    assert all(parameter is not quantizer.basis for parameter in quantizer.parameters())
    z = inputs().requires_grad_()
    output = quantizer(z)
    # The decoder's gradient and the commitment loss reach z_e only, never W.
    ((output.z_q * torch.randn_like(z)).sum() + output.losses["commitment"]).backward(retain_graph=True)
    assert quantizer.projection.weight.grad is None and quantizer.projection.bias.grad is None
    output.losses["codebook"].backward()

    weight = quantizer.projection.weight.detach().clone().requires_grad_()
    bias = quantizer.projection.bias.detach().clone().requires_grad_()
    chosen = (quantizer.basis @ weight.T + bias)[output.codes.flatten()]  # C[idx] (N, D), written out
    F.mse_loss(chosen, flat(z).detach()).backward()
    assert torch.allclose(quantizer.projection.weight.grad, weight.grad, atol=1e-6)
    assert torch.allclose(quantizer.projection.bias.grad, bias.grad, atol=1e-6)
    assert quantizer.basis.grad is None

    weight_before = quantizer.projection.weight.detach().clone()
    torch.optim.SGD(quantizer.parameters(), lr=0.1).step()
    assert torch.equal(quantizer.basis, basis)
    assert not torch.equal(quantizer.projection.weight, weight_before)
    restored = simvq(seed=7)  # another basis, until the checkpoint's is loaded
    assert not torch.equal(restored.basis, basis)
    restored.load_state_dict(quantizer.state_dict())
    assert torch.equal(restored.codebook(), quantizer.codebook())


def test_commitment_is_beta_times_the_squared_distance_and_straight_through_copies_the_gradient():
    beta = 0.7
    quantizer = simvq(beta=beta)
    z = inputs().requires_grad_()
    output = quantizer(z)
    chosen = codes_by_hand(quantizer)[output.codes.flatten()]  # (N, D)
    squared_distance = ((flat(z.detach()) - chosen) ** 2).mean()
    assert output.losses["commitment"].item() == pytest.approx(beta * squared_distance.item(), rel=1e-5)
    assert output.losses["codebook"].item() == pytest.approx(squared_distance.item(), rel=1e-5)
    downstream = torch.randn_like(z)
    (output.z_q * downstream).sum().backward()
    assert torch.equal(z.grad, downstream)


def test_embed_gives_the_rows_of_the_codebook():
    quantizer = simvq()
    codes = torch.randint(K, (3, 7, 7), generator=torch.Generator().manual_seed(2))
    expected = codes_by_hand(quantizer)[codes].permute(0, 3, 1, 2)  # (3, 7, 7, D) -> (3, D, 7, 7)
    assert quantizer.embed(codes).shape == (3, D, 7, 7)
    assert torch.allclose(quantizer.embed(codes), expected, atol=1e-6)
    output = quantizer(inputs())
    assert torch.allclose(quantizer.embed(output.codes), output.z_q, atol=1e-6)


@pytest.mark.parametrize("name, value", [
    ("num_embeddings", 0), ("num_embeddings", MAX_CODES + 1), ("num_embeddings", 16.0), ("num_embeddings", True),
    ("code_dim", -1), ("code_dim", "16"), ("beta", -0.1), ("beta", math.inf), ("beta", math.nan), ("beta", "0.25"),
    ("estimator", "rotate"), ("estimator", None)])
def test_the_config_refuses_bad_values_naming_the_field(name, value):
    with pytest.raises(ValueError, match=f"^{name} must be"):
        SimVQConfig(**{name: value})


def test_the_config_shares_the_vqs_flags_and_code_dim_zero_is_the_hidden_size():
    vq_fields = {field.name: field for field in fields(VQConfig)}
    for field in fields(SimVQConfig):
        shared = vq_fields[field.name]
        assert field.default == shared.default, field.name
        for key in ("flag", "help", "choices"):
            assert field.metadata.get(key) == shared.metadata.get(key), (field.name, key)
    assert SimVQ.dims(SimVQConfig(code_dim=0), hidden_size=8) == (8, 8)
    built = SimVQ.from_config(SimVQConfig(num_embeddings=16, code_dim=0), hidden_size=8)
    assert (built.num_embeddings, built.input_dim, built.code_dim, built.codebook().shape) == (16, 8, 8, (16, 8))


def test_the_codebooks_gradient_is_the_same_on_every_step():
    """The codebook loss reaches W through a lookup whose backward adds in a fixed order: the same batch gives the
    same gradient to the bit every time (advanced indexing's threads added in their own order), so a resumed run
    ends where the unbroken one does."""
    torch.manual_seed(0)
    simvq = SimVQ(16, 16)
    z_e = torch.randn(64, 16, 7, 7)

    def gradients():
        simvq.zero_grad()
        output = simvq(z_e)
        (sum(output.losses.values()) + output.z_q.pow(2).mean()).backward()
        return [parameter.grad.clone() for parameter in simvq.parameters()]

    first = gradients()
    for _ in range(20):
        assert all(torch.equal(a, b) for a, b in zip(first, gradients()))
