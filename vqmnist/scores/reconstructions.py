"""How well an autoencoder reconstructs an image set: its losses, MSE, PSNR, SSIM, and how it uses its codes."""
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm import tqdm

from bottleneck import perplexity_from_counts
from pixel_distributions import images_to_inputs
from vqmnist.running.processes import distributed, rank, sum_over_processes, world_size

# The figures code_statistics gives, which the epoch line and evaluate.py show in their own words.
CODE_STATISTICS = ("codes_used", "codebook_usage", "perplexity", "dead_codes")


def code_statistics(counts: Tensor) -> dict[str, float]:
    """The health of a discrete bottleneck over a whole image set, from its code counts (K,): CODE_STATISTICS."""
    codes_used = int((counts > 0).sum())
    return {"codes_used": codes_used, "codebook_usage": codes_used / len(counts),
            "perplexity": perplexity_from_counts(counts).item(), "dead_codes": len(counts) - codes_used}


@dataclass
class ReconstructionScores:
    recon_loss: float  # the loss the model trains on (MSE in [-1, 1] space, or BCE for logits)
    mse: float  # MSE in [0, 1] pixel space, averaged over every pixel of the set
    psnr: float  # 10 log10(1 / mse), in dB
    ssim: float  # mean structural similarity of a reconstruction and its image (torchmetrics, 11x11 Gaussian window)
    losses: dict[str, float]  # the bottleneck's loss terms by name, means over the set
    # The bottleneck's health over the set by name: the means of its batch figures, and for a discrete one the code
    # statistics of the whole set (codes_used, codebook_usage, perplexity, dead_codes), which take the place of a
    # batch figure of the same name.
    figures: dict[str, float]
    counts: Tensor | None  # (K,) how often each code was chosen; None for a continuous bottleneck
    # With per_image_8bit: {"psnr", "ssim"} as published MNIST tables compute them: each reconstruction rounded to 8
    # bits, PSNR 10 log10(255^2 / MSE) and SSIM (11-pixel Gaussian window) per image against its 8-bit digit, then
    # averaged over the images. Else None.
    per_image_8bit: dict[str, float] | None = None


@torch.no_grad()
def score_reconstructions(model: nn.Module, images: Tensor, batch_size: int, device: torch.device,
                          per_image_8bit: bool = False) -> ReconstructionScores:
    """Scores of a whole image set (N, 28, 28) uint8, from sums and code counts over all its batches; with
    per_image_8bit also the published tables' PSNR and SSIM (ReconstructionScores.per_image_8bit).

    Under torchrun each process scores every world_size-th image and the sums and counts are added up over the
    processes, so every process gets the scores of the whole set."""
    # imported here: torchmetrics' image metrics load torchvision, which --help and a flag error need not wait for
    from torchmetrics.functional.image import structural_similarity_index_measure

    was_training = model.training
    model.eval()
    shard = images[rank()::world_size()] if distributed() else images
    # Each figure summed over the images, by name, in float64 on the device: read once, at the end.
    sums: dict[str, Tensor] = {}
    counts = torch.zeros(model.bottleneck.num_codes if model.discrete else 0, dtype=torch.int64, device=device)

    def add(name: str, value: Tensor) -> None:
        sums[name] = sums.get(name, torch.zeros((), dtype=torch.float64, device=device)) + value.double()

    # A bar for the long sets (the test set, a large K); process 0 alone shows it under torchrun.
    for start in tqdm(range(0, len(shard), batch_size), desc="scoring", unit="batch", leave=False,
                      dynamic_ncols=True, disable=rank() != 0):
        batch = shard[start:start + batch_size].to(device)
        x = images_to_inputs(batch)
        x_recon, quantized = model(x)
        size, pixels, target = len(batch), model.to_pixels(x_recon), batch.unsqueeze(1).float() / 255
        add("recon", model.reconstruction_loss(x_recon, x).double() * size)
        add("squared_error", (pixels - target).pow(2).sum())
        add("ssim", structural_similarity_index_measure(pixels, target, data_range=1.0, reduction="sum"))
        if per_image_8bit:
            for name, value in sums_per_8bit_image(pixels, batch).items():
                add(f"8bit/{name}", value)
        for name, value in quantized.losses.items():
            add(f"loss/{name}", value.double() * size)
        for name, value in quantized.figures.items():
            add(f"figure/{name}", value.double() * size)
        if quantized.codes is not None:
            counts += model.bottleneck.count_codes(quantized.codes)
    model.train(was_training)
    names = list(sums)
    sums = dict(zip(names, sum_over_processes(torch.stack([sums[name] for name in names])).tolist()))
    sum_over_processes(counts)

    mse = sums.pop("squared_error") / images[0].numel() / len(images)
    totals = {name: value / len(images) for name, value in sums.items()}  # means over the images
    figures = {name.removeprefix("figure/"): value for name, value in totals.items() if name.startswith("figure/")}
    if model.discrete:
        figures.update(code_statistics(counts))
    return ReconstructionScores(
        recon_loss=totals["recon"],
        mse=mse,
        psnr=10 * math.log10(1.0 / mse) if mse > 0 else math.inf,
        ssim=totals["ssim"],
        losses={name.removeprefix("loss/"): value for name, value in totals.items() if name.startswith("loss/")},
        figures=figures,
        counts=counts.cpu() if model.discrete else None,
        per_image_8bit={name.removeprefix("8bit/"): value for name, value in totals.items()
                        if name.startswith("8bit/")} if per_image_8bit else None,
    )

def sums_per_8bit_image(pixels: Tensor, digits: Tensor) -> dict[str, Tensor]:
    """The published tables' PSNR and SSIM of reconstructions (B, 1, 28, 28) in [0, 1] rounded to 8 bits against
    their uint8 digits (B, 28, 28), each per image, summed over the batch."""
    from torchmetrics.functional.image import structural_similarity_index_measure  # see score_reconstructions

    levels, digit = (pixels * 255).round(), digits.unsqueeze(1).float()  # both in 0..255, whole levels
    image_mse = (levels - digit).pow(2).flatten(1).mean(1)  # (B,)
    return {"psnr": (10 * torch.log10(255 ** 2 / image_mse)).sum(),
            "ssim": structural_similarity_index_measure(levels, digit, data_range=255.0, reduction="sum")}
