"""The prior over code grids: causality, the cached sampler against full forward passes, temperature, guidance,
top-k and nucleus truncation, the drawn classes, the loss and the likelihood with the class summed out."""
import math

import pytest
import torch

from prior import CodePrior, PriorConfig, Truncation, marginal_nll_bits, prior_nll_bits

CONFIGS = [
    PriorConfig(num_embeddings=16, grid_size=7, width=32, num_layers=2, num_heads=4),
    PriorConfig(num_embeddings=5, grid_size=3, num_classes=3, width=24, num_layers=1, num_heads=2),
]


def make_prior(config: PriorConfig, seed: int = 0) -> CodePrior:
    torch.manual_seed(seed)
    prior = CodePrior(config).eval()
    # Random biases and position embeddings, so that every part of the input matters to the outputs.
    with torch.no_grad():
        for parameter in prior.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return prior


def random_inputs(config: PriorConfig, count: int, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    side = config.grid_size
    codes = torch.randint(config.num_embeddings, (count, side, side), generator=generator)
    classes = torch.randint(config.num_classes + 1, (count,), generator=generator)  # num_classes: no class
    return codes, classes


@pytest.mark.parametrize("config", CONFIGS)
def test_each_code_depends_only_on_the_class_and_the_codes_before_it(config):
    prior = make_prior(config)
    codes, classes = random_inputs(config, 2)
    logits = prior(codes, classes)
    length = config.grid_size ** 2
    assert logits.shape == (2, length, config.num_embeddings)
    for position in (0, length // 2, length - 1):
        changed = codes.flatten(1).clone()
        changed[:, position] = (changed[:, position] + 1) % config.num_embeddings
        changed_logits = prior(changed.view_as(codes), classes)
        # Outputs up to and including `position` predict codes 0..position: they must not see code `position`.
        torch.testing.assert_close(changed_logits[:, :position + 1], logits[:, :position + 1])
        if position + 1 < length:
            assert not torch.allclose(changed_logits[:, position + 1:], logits[:, position + 1:])
    other_classes = (classes + 1) % (config.num_classes + 1)
    assert not torch.allclose(prior(codes, other_classes)[:, 0], logits[:, 0])


@pytest.mark.parametrize("guidance", [0.0, 1.5])
@pytest.mark.parametrize("config", CONFIGS)
def test_sampling_at_a_tiny_temperature_is_greedy_decoding_by_full_forward_passes(config, guidance):
    prior = make_prior(config)
    _, classes = random_inputs(config, 6)
    sampled = prior.sample(classes, temperature=1e-6, guidance=guidance, generator=torch.Generator().manual_seed(0))
    # Brute force: rerun the whole sequence, with and without the class, for every position and take the most
    # likely code under the guided log-probabilities.
    side, length = config.grid_size, config.grid_size ** 2
    no_class = torch.full_like(classes, config.num_classes)
    greedy = torch.zeros(len(classes), length, dtype=torch.long)
    for position in range(length):
        conditional = torch.log_softmax(prior(greedy.view(-1, side, side), classes)[:, position], -1)
        unconditional = torch.log_softmax(prior(greedy.view(-1, side, side), no_class)[:, position], -1)
        greedy[:, position] = ((1 + guidance) * conditional - guidance * unconditional).argmax(-1)
    assert torch.equal(sampled, greedy.view(-1, side, side))


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("kept", [1, 4])
def test_completing_a_prefix_keeps_it_and_decodes_the_rest_greedily_at_a_tiny_temperature(config, kept):
    prior = make_prior(config)
    codes, classes = random_inputs(config, 6)
    prefix = codes.flatten(1)[:, :kept]
    completed = prior.sample(classes, temperature=1e-6, guidance=0.5, generator=torch.Generator().manual_seed(0),
                             prefix=prefix).flatten(1)
    assert torch.equal(completed[:, :kept], prefix)
    # Brute force from the prefix: full forward passes, the most likely guided code at each later position.
    side, length = config.grid_size, config.grid_size ** 2
    no_class = torch.full_like(classes, config.num_classes)
    greedy = torch.zeros(len(classes), length, dtype=torch.long)
    greedy[:, :kept] = prefix
    for position in range(kept, length):
        conditional = torch.log_softmax(prior(greedy.view(-1, side, side), classes)[:, position], -1)
        unconditional = torch.log_softmax(prior(greedy.view(-1, side, side), no_class)[:, position], -1)
        greedy[:, position] = (1.5 * conditional - 0.5 * unconditional).argmax(-1)
    assert torch.equal(completed, greedy)


def first_code_frequencies(prior: CodePrior, label: int, temperature: float, guidance: float, seed: int,
                           truncation: Truncation = Truncation()):
    """How often each code comes first in 4000 samples of class `label` (standard error below 0.008 each)."""
    classes = torch.full((4000,), label)
    codes = prior.sample(classes, temperature, guidance, torch.Generator().manual_seed(seed), truncation=truncation)
    return torch.bincount(codes[:, 0, 0], minlength=prior.config.num_embeddings).float() / len(classes)


def first_code_log_probabilities(prior: CodePrior, label: int) -> torch.Tensor:
    return torch.log_softmax(prior(torch.zeros(1, 3, 3, dtype=torch.long), torch.tensor([label]))[0, 0], -1)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_samples_follow_softmax_of_the_logits_over_the_temperature(temperature):
    prior = make_prior(CONFIGS[1])
    expected = torch.softmax(first_code_log_probabilities(prior, 1) / temperature, -1)
    frequencies = first_code_frequencies(prior, 1, temperature, guidance=0.0, seed=0)
    torch.testing.assert_close(frequencies, expected, atol=0.03, rtol=0)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_guidance_sharpens_the_first_code_towards_the_class(guidance):
    prior = make_prior(CONFIGS[1])
    conditional = first_code_log_probabilities(prior, 2)
    unconditional = first_code_log_probabilities(prior, prior.no_class)
    expected = torch.softmax(((1 + guidance) * conditional - guidance * unconditional) / 0.8, -1)
    frequencies = first_code_frequencies(prior, 2, temperature=0.8, guidance=guidance, seed=2)
    torch.testing.assert_close(frequencies, expected, atol=0.03, rtol=0)


def test_drawn_classes_follow_the_class_frequencies():
    prior = make_prior(CONFIGS[1])
    prior.class_frequencies.copy_(torch.tensor([0.6, 0.0, 0.4]))
    drawn = prior.draw_classes(5000, torch.Generator().manual_seed(0))
    frequencies = torch.bincount(drawn, minlength=3).float() / len(drawn)
    torch.testing.assert_close(frequencies, torch.tensor([0.6, 0.0, 0.4]), atol=0.03, rtol=0)


def test_sampling_is_reproducible_with_a_seed():
    prior = make_prior(CONFIGS[0])
    classes = torch.arange(10)
    first = prior.sample(classes, 1.0, 1.0, torch.Generator().manual_seed(3))
    again = prior.sample(classes, 1.0, 1.0, torch.Generator().manual_seed(3))
    other = prior.sample(classes, 1.0, 1.0, torch.Generator().manual_seed(4))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_loss_is_the_mean_negative_log_likelihood_of_the_codes():
    config = CONFIGS[0]
    prior = make_prior(config)
    codes, classes = random_inputs(config, 3)
    log_probabilities = torch.log_softmax(prior(codes, classes), -1)
    picked = log_probabilities.gather(-1, codes.flatten(1).unsqueeze(-1))
    torch.testing.assert_close(prior.loss(codes, classes), -picked.mean())


@pytest.mark.parametrize("config", CONFIGS)
def test_attention_is_torchs_causal_scaled_dot_product_attention(config):
    attention = make_prior(config).blocks[0].attention
    x = torch.randn(3, config.grid_size ** 2, config.width)
    batch, length, width = x.shape
    q, k, v = attention.qkv(x).view(batch, length, 3, config.num_heads, -1).permute(2, 0, 3, 1, 4)
    expected = attention.out(torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
                             .transpose(1, 2).reshape(batch, length, width))
    torch.testing.assert_close(attention(x), expected)


def test_a_bf16_step_lowers_the_loss_as_a_float32_step_does():
    from vqmnist.running.prior_task import make_prior_optimizer, prior_step
    config = CONFIGS[0]
    codes, classes = random_inputs(config, 32)
    losses = {}
    for amp in (False, True):
        prior = make_prior(config).train()
        optimizer = make_prior_optimizer(prior, lr=1e-2)
        first = prior_step(prior, optimizer, codes, classes, amp)
        assert first.requires_grad is False and first.dtype == torch.float32
        torch.testing.assert_close(first, prior.loss(codes, classes).detach(), atol=0.5, rtol=0)  # before the step
        for _ in range(20):
            last = prior_step(prior, optimizer, codes, classes, amp)
        losses[amp] = (first.item(), last.item())
    for first, last in losses.values():
        assert last < first - 0.5
    assert abs(losses[True][1] - losses[False][1]) < 0.1 * losses[False][1]


def nucleus_by_brute_force(probabilities: list[float], top_p: float) -> set[int]:
    """The smallest set of most likely codes whose probability reaches top_p, grown one code at a time."""
    kept, mass = set(), 0.0
    for code in sorted(range(len(probabilities)), key=lambda index: -probabilities[index]):
        if mass >= top_p:
            break
        kept.add(code)
        mass += probabilities[code]
    return kept


@pytest.mark.parametrize("top_p, kept", [(0.2, {2}), (0.49, {2}), (0.51, {2, 0}), (0.79, {2, 0}), (0.81, {2, 0, 3}),
                                         (0.94, {2, 0, 3}), (0.96, {2, 0, 3, 1}), (1.0, {2, 0, 3, 1})])
def test_nucleus_keeps_the_smallest_set_reaching_p_by_hand(top_p, kept):
    # Probabilities 0.3, 0.05, 0.5, 0.15: by hand, most likely first, 0.5 | 0.8 | 0.95 | 1.0.
    logits = torch.tensor([[0.3, 0.05, 0.5, 0.15]], dtype=torch.float64).log()
    truncated = Truncation(top_p=top_p)(logits)
    assert set(torch.isfinite(truncated[0]).nonzero()[:, 0].tolist()) == kept
    torch.testing.assert_close(truncated[torch.isfinite(truncated)], logits[torch.isfinite(truncated)])


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.99])
def test_nucleus_matches_brute_force_on_random_logits(top_p):
    logits = torch.randn(20, 50, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2
    truncated = Truncation(top_p=top_p)(logits)
    for row, kept_row in zip(logits.softmax(-1), torch.isfinite(truncated)):
        assert set(kept_row.nonzero()[:, 0].tolist()) == nucleus_by_brute_force(row.tolist(), top_p)


@pytest.mark.parametrize("top_k", [1, 3, 49])
def test_top_k_keeps_the_k_largest_logits(top_k):
    logits = torch.randn(20, 50, generator=torch.Generator().manual_seed(6))
    truncated = Truncation(top_k=top_k)(logits)
    for row, kept_row in zip(logits, torch.isfinite(truncated)):
        assert set(kept_row.nonzero()[:, 0].tolist()) == set(sorted(range(50), key=lambda code: -row[code])[:top_k])


@pytest.mark.parametrize("truncation", [Truncation(top_k=3), Truncation(top_p=0.6), Truncation(top_k=2, top_p=0.3)])
@pytest.mark.parametrize("guidance", [0.0, 1.5])
def test_sampled_codes_never_fall_outside_the_truncation(truncation, guidance):
    config = CONFIGS[0]
    prior = make_prior(config)
    _, classes = random_inputs(config, 40)
    temperature = 1.3
    sampled = prior.sample(classes, temperature, guidance, torch.Generator().manual_seed(1), truncation=truncation)
    # Brute force: full forward passes over the sampled grids give each position's guided logits, and so the codes
    # the truncation allows there; every drawn code must be one of them.
    no_class = torch.full_like(classes, config.num_classes)
    conditional = torch.log_softmax(prior(sampled, classes), -1)
    unconditional = torch.log_softmax(prior(sampled, no_class), -1)
    guided = ((1 + guidance) * conditional - guidance * unconditional) / temperature  # (B, 49, K)
    probabilities = guided.softmax(-1)
    for grid, grid_probabilities in zip(sampled.flatten(1), probabilities):
        for code, position_probabilities in zip(grid.tolist(), grid_probabilities):
            allowed = set(sorted(range(config.num_embeddings), key=lambda c: -position_probabilities[c])[
                :truncation.top_k or config.num_embeddings])
            kept = {c: position_probabilities[c].item() for c in allowed}
            total = sum(kept.values())
            allowed = nucleus_by_brute_force([kept.get(c, 0.0) / total for c in range(config.num_embeddings)],
                                             truncation.top_p) & allowed
            assert code in allowed


@pytest.mark.parametrize("truncation", [Truncation(top_k=2), Truncation(top_p=0.7)])
def test_truncated_samples_follow_the_renormalised_kept_probabilities(truncation):
    prior = make_prior(CONFIGS[1])
    probabilities = torch.softmax(first_code_log_probabilities(prior, 1), -1)
    kept = torch.zeros_like(probabilities, dtype=torch.bool)
    if truncation.top_k:
        kept[probabilities.topk(truncation.top_k).indices] = True
    else:
        kept[list(nucleus_by_brute_force(probabilities.tolist(), truncation.top_p))] = True
    assert 1 < kept.sum() < len(kept)  # the truncation leaves something out, and keeps a choice
    expected = torch.where(kept, probabilities, 0) / probabilities[kept].sum()
    frequencies = first_code_frequencies(prior, 1, temperature=1.0, guidance=0.0, seed=4, truncation=truncation)
    torch.testing.assert_close(frequencies, expected, atol=0.03, rtol=0)


@pytest.mark.parametrize("top_k, top_p", [(-1, 1.0), (0, 0.0), (0, 1.5), (2.5, 1.0)])
def test_a_truncation_out_of_range_is_refused(top_k, top_p):
    with pytest.raises(ValueError):
        Truncation(top_k=top_k, top_p=top_p)


@pytest.mark.parametrize("config", CONFIGS)
def test_the_marginal_nll_sums_the_class_out_by_brute_force(config):
    prior = make_prior(config)
    weights = torch.linspace(1, 2, config.num_classes)
    prior.class_frequencies.copy_(weights / weights.sum())
    codes, _ = random_inputs(config, 5)
    # By hand: p(codes) = sum over c of p(c) prod over positions of p(code_t | c, codes before t).
    expected = 0.0
    for grid in codes:
        likelihood = 0.0
        for label in range(config.num_classes):
            log_probabilities = torch.log_softmax(prior(grid[None], torch.tensor([label]))[0].double(), -1)
            picked = log_probabilities[torch.arange(config.grid_size ** 2), grid.flatten()]
            likelihood += prior.class_frequencies[label].item() * math.exp(picked.sum().item())
        expected += -math.log2(likelihood) / config.grid_size ** 2 / len(codes)
    assert marginal_nll_bits(prior, codes, batch_size=2) == pytest.approx(expected, rel=1e-5)
    # Per grid, p(c) p(codes | c) <= p(codes): so the mean is at most each class's NLL plus log2 1 / p(c) per image.
    marginal = marginal_nll_bits(prior, codes)
    for label in range(config.num_classes):
        given = prior_nll_bits(prior, codes, torch.full((5,), label))
        assert marginal <= given - math.log2(prior.class_frequencies[label].item()) / config.grid_size ** 2 + 1e-6
