"""The largest sizes and values a flag or a file may ask for: what a run on one machine can honour."""
import os
from collections.abc import Callable

import torch
from torch import nn

from options import StepCost

MAX_SEED = 2 ** 63 - 1  # torch.manual_seed takes 64 bits
# Values (weights and buffers) an autoencoder or a prior from a flag or a file may hold: 256 MB of float32.
MAX_MODEL_VALUES = 2 ** 26
MAX_BATCH = 4096  # images or grids of one training step: more would not fit a laptop's memory at the default sizes
MAX_SCORING_BATCH = 10_000  # images of one batch without gradients (scoring)
MAX_VALIDATION = 59_999  # of MNIST's 60,000 training images, at least one is left to train on
MAX_LEARNING_RATE = 10.0
MAX_EPOCHS = 100_000
MAX_STEPS_BETWEEN_LOGS = 1_000_000
MAX_SECONDS = 10 ** 8  # --time-limit: three years
MAX_THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
MAX_WORKERS = 64
MAX_SAMPLES = 10_000  # the MNIST test set, which sample scores are compared with
MAX_IW_SAMPLES = 5_000  # samples of z an image for the importance-weighted bound: 50 million decodes of the test set
# Sampling: a temperature below this turns softmax(logits / T) into a one-hot of the largest logit in float32 and
# then overflows; above MAX_TEMPERATURE or MAX_GUIDANCE the logits say nothing any more.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 100.0
MAX_GUIDANCE = 100.0
# One training step: its largest tensor (512 MB of float32), and its bottleneck's multiply-adds, about a minute of a
# laptop CPU's work at worst. Larger settings are refused before the first step, which nothing could stop sooner.
MAX_STEP_VALUES = 2 ** 27
MAX_STEP_OPERATIONS = 10 ** 10


def check_step_cost(cost: StepCost, what: str) -> None:
    """Refuse (ValueError) a step larger than MAX_STEP_VALUES or MAX_STEP_OPERATIONS."""
    if cost.values > MAX_STEP_VALUES:
        raise ValueError(f"{what} would make a tensor of {cost.values:,} values, more than the {MAX_STEP_VALUES:,} "
                         "one step may")
    if cost.operations > MAX_STEP_OPERATIONS:
        raise ValueError(f"{what} would take {cost.operations:.1e} multiply-adds in the bottleneck, more than the "
                         f"{MAX_STEP_OPERATIONS:.0e} one step may")


def check_size(build: Callable[[], nn.Module], what: str) -> nn.Module:
    """The module build() makes, built on the meta device, where nothing is allocated and no random number is drawn;
    refused (ValueError) if it would hold more than MAX_MODEL_VALUES values (weights and buffers)."""
    with torch.device("meta"):
        module = build()
    values = sum(tensor.numel() for tensor in module.state_dict().values())
    if values > MAX_MODEL_VALUES:
        raise ValueError(f"{what} would hold {values:,} values, more than the {MAX_MODEL_VALUES:,} this project "
                         "builds")
    return module
