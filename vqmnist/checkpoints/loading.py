"""A trained model read back from its checkpoint: its autoencoder and prior rebuilt from their stored configs, their
weights checked before they are loaded."""
from dataclasses import fields
from pathlib import Path
from typing import NamedTuple

from modules import VQVAE, VQVAEConfig
from prior import CodePrior
from vqmnist.checkpoints.checks import check_plain_values, check_weights
from vqmnist.checkpoints.format import load_checkpoint, load_prior, no_prior
from vqmnist.configuration.errors import UserError
from vqmnist.configuration.limits import check_size


class Loaded(NamedTuple):
    """What a checkpoint holds, rebuilt: its autoencoder and its prior (None where it has none, or where not asked
    for), in eval mode on the device, and the checkpoint itself."""

    model: VQVAE
    prior: CodePrior | None
    checkpoint: dict
    path: Path

    def require_prior(self, instead: str = "") -> CodePrior:
        """The prior; one line saying how to train one where the checkpoint holds none (and `instead`, what the
        script can do without it)."""
        if self.prior is None:
            raise no_prior(self.path, instead)
        return self.prior


def load_model(path, device="cpu", with_prior: bool = True) -> Loaded:
    """Rebuild the autoencoder and, with_prior, the prior from the configs stored in the checkpoint and load their
    weights; a config this version cannot build, or weights that do not fit it as they are (check_weights), is one
    line."""
    path = Path(path)
    checkpoint = load_checkpoint(path, device)
    meta = stored_autoencoder(checkpoint, path)
    check_weights(meta, checkpoint["model"], path)
    model = VQVAE(meta.config)
    model.load_state_dict(checkpoint["model"])
    model = model.to(device).eval()
    prior = load_prior(checkpoint, path, model, device) if with_prior and "prior" in checkpoint else None
    return Loaded(model, prior, checkpoint, path)


def stored_autoencoder(checkpoint: dict, path: Path) -> VQVAE:
    """The autoencoder of the config a checkpoint stores, built on the meta device (nothing allocated, its config
    as `.config`), no larger than this project builds; one line if it cannot be rebuilt."""
    known = {field.name for field in fields(VQVAEConfig)}
    config = checkpoint["config"]
    check_plain_values(config, path, "model config")
    if not config.keys() <= known:
        raise UserError(f"{path} has a model config this version does not know: it holds "
                        f"{', '.join(sorted(config.keys() - known))}")
    try:
        config = VQVAEConfig(**config)
        return check_size(lambda: VQVAE(config), "the autoencoder")
    except (ValueError, TypeError) as error:
        raise UserError(f"{path} has a model config this version cannot build: {error}") from None
