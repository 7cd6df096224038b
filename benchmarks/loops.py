"""The training loops benchmarks/speed.py times, the reference's plain ones and the project's, one step per next()."""
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from modules import VQVAE, VQVAEConfig
from prior import CodePrior, PriorConfig
from vqmnist.io.data import epoch_batches
from vqmnist.running.autoencoder_task import make_optimizer, training_step
from vqmnist.running.prior_task import make_prior_optimizer, prior_step


class Loop(NamedTuple):
    """A training loop to time: each next(steps) runs one optimizer step on items_per_step images or tokens."""

    name: str
    unit: str  # "img" or "token"
    items_per_step: int
    precision: str  # what its matrix products compute in: "fp32" or "bf16"
    steps: Iterator[None]


class ProjectSettings(NamedTuple):
    """The speed settings of vqvae.py's autoencoder loop, each of which --ablation turns off alone."""

    amp: bool
    channels_last: bool = True
    fused_adam: bool = True
    compile: bool = False


def autoencoder_plain(data_folder: Path, batch_size: int, device: torch.device) -> Loop:
    """The reference's loop: torchvision's MNIST made into tensors image by image, Adam, .item() every step."""
    dataset = datasets.MNIST(str(data_folder), train=True, download=False, transform=transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))]))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0,
                        pin_memory=device.type == "cuda")
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig()).to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def steps():
        while True:
            for x, _ in loader:
                x = x.to(device)
                x_recon, quantized = model(x)
                loss = nn.functional.mse_loss(x_recon, x) + model.bottleneck_loss(quantized)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                loss.item()
                yield

    return Loop("autoencoder, plain (torchvision transforms, DataLoader, .item() per step)", "img", batch_size,
                "fp32", steps())


def autoencoder_project(images: Tensor, batch_size: int, device: torch.device, settings: ProjectSettings) -> Loop:
    """vqvae.py's loop: the uint8 training set on the device, batches cut by index, autoencoder_task.training_step."""
    images = images.to(device)
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig()).to(device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if settings.compile else model
    optimizer = make_optimizer(model, lr=1e-3, fused=settings.fused_adam)
    generator = torch.Generator().manual_seed(0)

    def steps():
        while True:
            for batch in epoch_batches(images, batch_size, generator, num_workers=0):
                training_step(model, optimizer, batch, amp=settings.amp, forward=forward)
                yield

    return Loop("autoencoder, project (as vqvae.py)", "img", batch_size, "bf16" if settings.amp else "fp32", steps())


class PlainTransformerPrior(nn.Module):
    """The prior of `config` written the plain PyTorch way: nn.TransformerEncoder (pre-norm, GELU, 4x wide MLP) with
    a causal mask, over the class token and the first 48 codes, as prior.CodePrior reads them."""

    def __init__(self, config: PriorConfig):
        super().__init__()
        length = config.grid_size ** 2
        self.class_embedding = nn.Embedding(config.num_classes + 1, config.width)
        self.code_embedding = nn.Embedding(config.num_embeddings, config.width)
        self.position_embedding = nn.Parameter(torch.zeros(length, config.width))
        layer = nn.TransformerEncoderLayer(config.width, config.num_heads, 4 * config.width, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.num_layers, norm=nn.LayerNorm(config.width),
                                             enable_nested_tensor=False)
        self.head = nn.Linear(config.width, config.num_embeddings)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(length))

    def forward(self, codes: Tensor, classes: Tensor) -> Tensor:
        """Codes (B, 7, 7) and classes (B,) -> logits (B, 49, K)."""
        codes = codes.flatten(1)
        x = torch.cat([self.class_embedding(classes)[:, None], self.code_embedding(codes[:, :-1])], dim=1)
        return self.head(self.encoder(x + self.position_embedding, mask=self.mask, is_causal=True))


def random_grids(config: PriorConfig, device: torch.device, count: int = 10_000) -> tuple[Tensor, Tensor]:
    """count random code grids (count, 7, 7) and classes (count,): the step's time does not depend on the values."""
    generator = torch.Generator().manual_seed(0)
    side = config.grid_size
    codes = torch.randint(config.num_embeddings, (count, side, side), generator=generator)
    return codes.to(device), torch.randint(config.num_classes, (count,), generator=generator).to(device)


def grid_batches(codes: Tensor, classes: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(0)
    while True:
        for indices in torch.randperm(len(codes), generator=generator).to(codes.device).split(batch_size):
            yield codes[indices], classes[indices]


def prior_plain(config: PriorConfig, batch_size: int, device: torch.device) -> Loop:
    """The plain transformer of the prior's size, with AdamW and .item() every step, in float32."""
    torch.manual_seed(0)
    model = PlainTransformerPrior(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = grid_batches(*random_grids(config, device), batch_size)

    def steps():
        for codes, classes in batches:
            logits = model(codes, classes)
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), codes.flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()
            yield

    tokens = batch_size * config.grid_size ** 2
    return Loop("prior, plain (nn.TransformerEncoder, causal mask, AdamW, .item() per step)", "token", tokens,
                "fp32", steps())


def prior_project(config: PriorConfig, batch_size: int, device: torch.device, amp: bool) -> Loop:
    """vqvae.py's prior loop: prior.CodePrior and prior_task.prior_step."""
    torch.manual_seed(0)
    prior = CodePrior(config).to(device)
    optimizer = make_prior_optimizer(prior, lr=1e-3)
    batches = grid_batches(*random_grids(config, device), batch_size)

    def steps():
        for codes, classes in batches:
            prior_step(prior, optimizer, codes, classes, amp)
            yield

    tokens = batch_size * config.grid_size ** 2
    return Loop("prior, project (as vqvae.py)", "token", tokens, "bf16" if amp else "fp32", steps())
