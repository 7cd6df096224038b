"""The rotation trick (`--gradient rotation`): its forward value is the code, and the gradient reaching z_e is the
one at z_q turned by the rotation of z_e's direction onto the code's and scaled by ||q|| / ||e||, as Fifty et al.
(2024) define it; checked against a hand-worked example and against the rotation built as a matrix."""
import signal

import pytest
import torch

import evaluate
import generate
from helpers import model_config, signal_on_call, train_tiny
from modules import VQVAE
from nearest_code import pass_gradient, rotation_trick
from testers import reference_quantizer
from vqmnist.checkpoints.loading import load_model
from vqmnist.configuration.errors import RunStopped


def as_grid(vectors: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N, D, 1, 1), the bottleneck's layout."""
    return vectors[:, :, None, None]


def gradient_at_z_e(z_e: torch.Tensor, z_q: torch.Tensor, upstream: torch.Tensor, estimator: str) -> torch.Tensor:
    z_e = z_e.clone().requires_grad_()
    (pass_gradient(as_grid(z_e), as_grid(z_q), estimator) * as_grid(upstream)).sum().backward()
    return z_e.grad


def test_a_hand_worked_quarter_turn():
    # e = (2, 0), q = (0, 1): R turns the x axis onto the y axis, R = [[0, -1], [1, 0]], and ||q|| / ||e|| = 1/2.
    # The gradient at z_e is (1/2) R^T g: for g = (1, 0) that is (1/2) (0, -1); straight-through copies g.
    e, q, g = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])
    assert torch.equal(rotation_trick(as_grid(e), as_grid(q)), as_grid(q))
    assert torch.allclose(gradient_at_z_e(e, q, g, "rotation"), torch.tensor([[0.0, -0.5]]), atol=1e-6)
    assert torch.equal(gradient_at_z_e(e, q, g, "straight-through"), g)


def test_a_hand_worked_eighth_turn():
    # e = (1, 0), q = (1, 1): a 45-degree turn scaled by sqrt(2); R^T g for g = (0, 1) is (sqrt(2)/2, sqrt(2)/2),
    # times sqrt(2): (1, 1).
    e, q, g = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 1.0]])
    assert torch.allclose(gradient_at_z_e(e, q, g, "rotation"), torch.tensor([[1.0, 1.0]]), atol=1e-6)


@pytest.mark.parametrize("dim", [2, 3, 16])
def test_the_gradient_is_the_scaled_rotation_built_as_a_matrix(dim):
    generator = torch.Generator().manual_seed(dim)
    e, q, g = (torch.randn(8, dim, generator=generator, dtype=torch.float64) for _ in range(3))
    gradient = gradient_at_z_e(e, q, g, "rotation")
    for row in range(len(e)):
        e_hat, q_hat = e[row] / e[row].norm(), q[row] / q[row].norm()
        r = (e_hat + q_hat) / (e_hat + q_hat).norm()
        rotation = torch.eye(dim, dtype=torch.float64) - 2 * torch.outer(r, r) + 2 * torch.outer(q_hat, e_hat)
        # R is a rotation taking e's direction onto q's, and the gradient is (||q|| / ||e||) R^T g.
        assert torch.allclose(rotation @ rotation.T, torch.eye(dim, dtype=torch.float64), atol=1e-12)
        assert torch.allclose(rotation @ e_hat, q_hat, atol=1e-12)
        expected = q[row].norm() / e[row].norm() * rotation.T @ g[row]
        assert torch.allclose(gradient[row], expected, atol=1e-10)


def test_the_value_is_the_code_even_for_opposite_and_zero_vectors():
    e = torch.tensor([[1.0, 0.0], [0.0, 0.0], [3.0, 4.0]])
    q = torch.tensor([[-2.0, 0.0], [5.0, 1.0], [3.0, 4.0]])
    assert torch.equal(rotation_trick(as_grid(e), as_grid(q)), as_grid(q))
    assert torch.isfinite(gradient_at_z_e(e, q, torch.ones(3, 2), "rotation")).all()


def test_the_vq_with_the_rotation_trick_gives_its_code_and_the_rotated_gradient():
    torch.manual_seed(0)
    quantizer = reference_quantizer(8, 4, estimator="rotation").train()
    z_e = torch.randn(2, 4, 3, 3, requires_grad=True)
    upstream = torch.randn(2, 4, 3, 3)
    output = quantizer(z_e)
    codes = quantizer.embed(output.codes)
    assert torch.equal(output.z_q, codes)
    (output.z_q * upstream).sum().backward()
    flat_e, flat_q = z_e.detach().permute(0, 2, 3, 1).reshape(-1, 4), codes.detach().permute(0, 2, 3, 1).reshape(-1, 4)
    expected = gradient_at_z_e(flat_e, flat_q, upstream.permute(0, 2, 3, 1).reshape(-1, 4), "rotation")
    assert torch.allclose(z_e.grad.permute(0, 2, 3, 1).reshape(-1, 4), expected, atol=1e-6)


def test_the_estimator_is_stored_in_the_model_config():
    model = VQVAE(model_config(estimator="rotation", num_embeddings=8))
    assert model.bottleneck.estimator == "rotation"
    with pytest.raises(ValueError, match="estimator must be one of"):
        model_config(estimator="sideways")


def test_a_run_with_the_rotation_trick_resumes_to_the_same_weights_and_samples(tiny_mnist, tmp_path, monkeypatch,
                                                                             capsys):
    monkeypatch.chdir(tmp_path)
    train_tiny(tiny_mnist, "--num-epochs", "2", "--gradient", "rotation", "--output-folder", "whole")
    with monkeypatch.context() as patch:
        signal_on_call(patch, torch.optim.Adam, "step", 3, signal.SIGTERM)
        with pytest.raises(RunStopped):
            train_tiny(tiny_mnist, "--num-epochs", "2", "--gradient", "rotation")
    train_tiny(tiny_mnist, "--num-epochs", "2", "--resume")
    whole, resumed = (torch.load(f"models/{name}/last.pt", weights_only=True)["model"] for name in ("whole", "tiny"))
    for name, tensor in whole.items():
        assert torch.equal(tensor, resumed[name]), name
    model, _, checkpoint, _ = load_model("models/tiny/best.pt")
    assert model.bottleneck.estimator == "rotation" and "prior" in checkpoint
    for mode in ("random", "complete"):
        generate.main(generate.build_parser().parse_args(["--model", "models/tiny/best.pt", "--input", mode,
                                                          "--data-folder", str(tiny_mnist), "--filename", mode]))
        assert (tmp_path / "generatedImages" / f"{mode}.png").is_file()
    capsys.readouterr()
    evaluate.main(evaluate.build_parser().parse_args(["--model", "models/tiny/best.pt", "--data-folder",
                                                      str(tiny_mnist), "--samples", "0"]))
    assert "codebook usage" in capsys.readouterr().out
