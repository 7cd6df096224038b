"""The settings several bottlenecks share, each flag defined once: --k, --code-dim, --beta and --gradient.

A field of the same name in two bottlenecks' Configs is one flag of vqvae.py (the first registered bottleneck's
definition); making each of these fields with the function here keeps its flag, default, help and checks the same
wherever it appears. Each call makes a new dataclass field.
"""
import math

from vqmnist.bottleneck import option
from vqmnist.cli import integer, number
from vqmnist.limits import MAX_CODES, MAX_LOSS_WEIGHT, MAX_WIDTH
from vqmnist.nearest_code import ESTIMATORS


def num_embeddings_option():
    return option(512, "--k", f"number of codes K in the codebook (of each level), at most {MAX_CODES:,} (default: "
                  "512)", type=integer(1, MAX_CODES))


def code_dim_option():
    return option(16, "--code-dim", "dimension D of the codes, or of a continuous z; if it differs from --hidden-size, "
                  "1x1 convolutions project into and out of code space; 0 means D = --hidden-size (default: 16)",
                  type=integer(0, MAX_WIDTH))


def code_dim_of(config, hidden_size: int) -> int:
    """D of a config with a code_dim field behind an encoder of hidden_size channels: code_dim, where 0 means
    hidden_size."""
    return config.code_dim or hidden_size


def beta_option():
    return option(0.25, "--beta", "weight of the commitment loss (default: 0.25)", type=number(0, MAX_LOSS_WEIGHT))


def estimator_option():
    return option("straight-through", "--gradient", "how the gradient passes the choice of code: straight-through "
                  "(copied onto z_e) or rotation (the rotation trick: rotated and rescaled from z_q's direction onto "
                  "z_e's) (default: straight-through)", choices=ESTIMATORS)


def check_shared_fields(config) -> None:
    """Refuse a value of the fields above that config has which cannot be built: ValueError naming the field, so that
    a bad flag or checkpoint fails in one line."""
    for name, smallest, largest in (("num_embeddings", 1, MAX_CODES), ("code_dim", 0, MAX_WIDTH)):
        value = getattr(config, name, smallest)
        if type(value) is not int or not smallest <= value <= largest:
            raise ValueError(f"{name} must be an integer from {smallest} to {largest:,}, not {value!r}")
    beta = getattr(config, "beta", 0)
    if type(beta) not in (int, float) or not 0 <= beta < math.inf:
        raise ValueError(f"beta must be a number in [0, inf), not {beta!r}")
    estimator = getattr(config, "estimator", ESTIMATORS[0])
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, not {estimator!r}")
