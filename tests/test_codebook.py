"""How the codebook learns and stays in use: EMA updates, initialisation from data, dead-code restarts, cosine codes."""
import pytest
import torch

from testers import brute_force_nearest, random_inputs, random_quantizer, reference_quantizer
from vector_quantizer import VectorQuantizer, kmeans_plus_plus


def rows(*vectors):
    """Encoder outputs (1, D, 1, N) whose N positions are the given D-vectors."""
    return torch.tensor(vectors, dtype=torch.float32).t().reshape(1, -1, 1, len(vectors))


def is_row_of(vector: torch.Tensor, matrix: torch.Tensor) -> bool:
    return bool((matrix == vector).all(dim=1).any())


# Codes e0 = (0, 0) and e1 = (10, 10), each with moving-average count 2 (so embed_sum = 2 e). One step with decay
# 1/2 on the batch (1, 0), (0, 1) -> e0 and (9, 9) -> e1, i.e. counts (2, 1) and sums (1, 1), (9, 9):
#   cluster_size = (2 + 2) / 2, (2 + 1) / 2       = (2, 1.5)
#   embed_sum    = (0 + 1) / 2, (20 + 9) / 2      = (0.5, 0.5), (14.5, 14.5)
# Laplace smoothing with epsilon and n = 3.5 divides by (cluster_size + epsilon) / (n + 2 epsilon) * n:
#   epsilon = 0:   e0 = 0.5 / 2 = 0.25,                    e1 = 14.5 / 1.5 = 9.6667
#   epsilon = 0.5: e0 = 0.5 * 4.5 / (2.5 * 3.5) = 0.2571,  e1 = 14.5 * 4.5 / (2 * 3.5) = 9.3214
@pytest.mark.parametrize("epsilon, expected_code_0, expected_code_1", [
    (0.0, 0.25, 14.5 / 1.5),
    (0.5, 2.25 / 8.75, 65.25 / 7.0),
])
def test_ema_update_matches_hand_computation(epsilon, expected_code_0, expected_code_1):
    quantizer = VectorQuantizer(2, 2, beta=0.25, codebook_update="ema", ema_decay=0.5, epsilon=epsilon,
                                restart_threshold=0.0)
    quantizer.set_codebook(torch.tensor([[0.0, 0.0], [10.0, 10.0]]), count=2.0)
    output = quantizer(rows((1, 0), (0, 1), (9, 9)))

    assert output.codes.flatten().tolist() == [0, 0, 1]
    assert quantizer.cluster_size.tolist() == [2.0, 1.5]
    assert quantizer.embed_sum.tolist() == [[0.5, 0.5], [14.5, 14.5]]
    expected = torch.tensor([[expected_code_0] * 2, [expected_code_1] * 2])
    assert torch.allclose(quantizer.embedding.weight, expected, rtol=1e-6)
    # This step's output uses the codes as they were when its indices were chosen.
    assert output.z_q.squeeze().t().tolist() == [[0, 0], [0, 0], [10, 10]]


def test_ema_codebook_is_left_alone_in_eval_mode():
    quantizer = random_quantizer(8, 3, codebook_update="ema", restart_threshold=5.0).eval()
    before = {name: tensor.clone() for name, tensor in quantizer.state_dict().items()}
    quantizer(random_inputs(2, 3, 4, 4))
    for name, tensor in quantizer.state_dict().items():
        assert torch.equal(tensor, before[name]), name


@pytest.mark.parametrize("codebook_update", ["ema", "loss"])
def test_dead_code_restarts_onto_an_encoder_output(codebook_update):
    # Every input sits near code 0; codes 1-3 are far away and go unused, so their counts decay below the
    # threshold (4 -> 2 after one step at decay 1/2) while code 0's rises (4 -> 18).
    codes = torch.tensor([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [-100.0, -100.0]])
    quantizer = VectorQuantizer(4, 2, beta=0.25, codebook_update=codebook_update, ema_decay=0.5, restart_threshold=3.0)
    quantizer.set_codebook(codes, count=4.0)
    z_e = random_inputs(1, 2, 4, 8) * 0.1  # 32 encoder outputs near (0, 0)
    quantizer(z_e)

    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 2)
    weight = quantizer.embedding.weight.detach()
    for code in (1, 2, 3):
        assert is_row_of(weight[code], flat), f"code {code} was not moved onto an encoder output"
    assert not is_row_of(weight[0], flat), "the used code was restarted"
    # Restarted codes start over with a fair share of the batch, N / K = 8, so they are not restarted again at once.
    assert quantizer.cluster_size[1:].tolist() == [8.0, 8.0, 8.0]
    assert quantizer.cluster_size[0].item() == pytest.approx(0.5 * 4 + 0.5 * 32)


def test_no_restart_with_threshold_zero():
    codes = torch.tensor([[0.0, 0.0], [100.0, 0.0]])
    quantizer = VectorQuantizer(2, 2, beta=0.25, codebook_update="loss", ema_decay=0.5, restart_threshold=0.0)
    quantizer.set_codebook(codes, count=4.0)
    quantizer(random_inputs(1, 2, 4, 8) * 0.1)
    assert torch.equal(quantizer.embedding.weight.detach()[1], codes[1])


@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_codebook_is_initialised_from_the_first_batch(init):
    torch.manual_seed(0)
    quantizer = reference_quantizer(16, 3, codebook_init=init)
    z_e = random_inputs(2, 3, 5, 5) * 5 + 3  # far from the uniform init in [-1/16, 1/16]
    quantizer.eval()(z_e)
    assert not quantizer.initialized, "an eval-mode pass initialised the codebook"

    quantizer.train()(z_e)
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 3)
    weight = quantizer.embedding.weight.detach()
    assert all(is_row_of(code, flat) for code in weight), "a code is not one of the encoder outputs"
    assert len(weight.unique(dim=0)) == 16, "two codes were initialised to the same encoder output"
    # Counts start at a fair share of the batch, 50 / 16 each; one EMA step of counts summing to 50 keeps the sum.
    assert quantizer.initialized and quantizer.cluster_size.sum().item() == pytest.approx(50)
    assert quantizer.cluster_size.min() > 0.99 * 50 / 16 - 1e-6

    second = random_inputs(2, 3, 5, 5, seed=7)
    quantizer(second)
    assert all(is_row_of(code, flat) for code in quantizer.embedding.weight.detach()), "re-initialised later"


def test_uniform_init_keeps_the_reference_codes():
    quantizer = reference_quantizer(16, 3)
    before = quantizer.embedding.weight.detach().clone()
    quantizer(random_inputs(2, 3, 5, 5) * 5)
    assert torch.equal(quantizer.embedding.weight.detach(), before)
    assert before.abs().max() <= 1 / 16


def test_initialisation_survives_a_checkpoint():
    quantizer = reference_quantizer(16, 3, codebook_init="kmeans++")
    quantizer(random_inputs(2, 3, 5, 5))
    restored = reference_quantizer(16, 3, codebook_init="kmeans++")
    restored.load_state_dict(quantizer.state_dict())
    assert not restored.needs_init
    restored(random_inputs(2, 3, 5, 5, seed=9))
    assert torch.equal(restored.embedding.weight, quantizer.embedding.weight)


def test_kmeans_plus_plus_seeds_one_centre_per_cluster():
    # Eight tight clusters far apart: k-means++ picks the next centre in proportion to the squared distance, so
    # after a cluster has a centre its points are (almost) never drawn again.
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(8, 4, generator=generator) * 1000
    points = (centres.repeat_interleave(50, dim=0) + torch.randn(400, 4, generator=generator) * 0.01)
    torch.manual_seed(0)
    chosen = kmeans_plus_plus(points, 8)
    clusters = torch.cdist(chosen, centres).argmin(dim=1)
    assert sorted(clusters.tolist()) == list(range(8))
    assert all(is_row_of(centre, points) for centre in chosen)


@pytest.mark.parametrize("codebook_update", ["ema", "loss"])
def test_cosine_codes_pick_the_most_similar_direction(codebook_update):
    quantizer = random_quantizer(32, 6, codebook_update=codebook_update, cosine=True)
    z_e = random_inputs(2, 6, 4, 4) * 3  # magnitudes far from 1: only the direction should matter
    codebook = quantizer.codebook().detach()
    assert torch.allclose(codebook.norm(dim=1), torch.ones(32))
    output = quantizer.eval()(z_e)
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 6)
    similarity = torch.nn.functional.normalize(flat, dim=1) @ codebook.t()
    assert torch.equal(output.codes.flatten(), similarity.argmax(dim=1))
    unit_z_e = torch.nn.functional.normalize(z_e, dim=1)
    assert torch.equal(output.codes, brute_force_nearest(unit_z_e, codebook)[1])
    assert torch.allclose(output.z_q.norm(dim=1), torch.ones(2, 4, 4))
