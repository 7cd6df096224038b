"""Choosing each vector's nearest code, and passing the gradient through that choice: straight-through or rotated.

The choice (an argmin) has no gradient. The straight-through estimator (van den Oord et al., 2017) copies the
decoder's gradient at z_q onto z_e unchanged. The rotation trick (Fifty et al., 2024, "Restructuring Vector
Quantization with the Rotation Trick") writes z_q as a rotation and rescaling of z_e, both held constant in the
backward pass: z_q = (||q|| / ||e||) R e with R the rotation taking e's direction onto q's, so the gradient reaching
z_e is (||q|| / ||e||) R^T times the gradient at z_q, turned by the angle between the two.
"""
import torch
import torch.nn.functional as F
from torch import Tensor

from options import StepCost

ESTIMATORS = ("straight-through", "rotation")
# Most values of the (rows, K) distance tensor of one chunk of the nearest-code search: 128 MB of fp32.
DISTANCE_BUDGET = 1 << 25
# Norms below this count as zero: the direction of a zero vector is taken as zero, not divided by zero.
NORM_FLOOR = 1e-12


def search_cost(positions: int, num_embeddings: int, code_dim: int) -> StepCost:
    """The cost of nearest_codes over positions rows and K codes of D dimensions: its largest tensor is a chunk of
    distances, the rows themselves, or the codebook."""
    return StepCost(values=max(min(positions * num_embeddings, DISTANCE_BUDGET), positions * code_dim,
                               num_embeddings * code_dim),
                    operations=positions * num_embeddings * code_dim)


def nearest_codes(flat: Tensor, codebook: Tensor) -> Tensor:
    """Index of the nearest row of codebook (K, D) for each row of flat (N, D), by Euclidean distance, in chunks of
    rows whose (rows, K) distance tensor holds at most DISTANCE_BUDGET values, whatever N and K: (N,) int64."""
    # Distances in fp32 even under autocast: in bf16 the near-ties between codes would round to the same value.
    with torch.autocast(device_type=flat.device.type, enabled=False):
        flat, codebook = flat.float(), codebook.float()
        squared_norms = codebook.pow(2).sum(1)
        rows = max(1, DISTANCE_BUDGET // len(codebook))
        # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2 as one fused matrix product: (rows, K), never (rows, K, D).
        # ||z||^2 is the same for every code of a row, so the argmin leaves it out: one (rows, K) tensor, not two.
        return torch.cat([torch.addmm(squared_norms, chunk, codebook.t(), beta=1.0, alpha=-2.0).argmin(dim=1)
                          for chunk in flat.split(rows)])


def rotation_trick(z_e: Tensor, z_q: Tensor) -> Tensor:
    """z_e and its codes z_q, both (B, D, H, W) -> a tensor whose value is z_q and whose gradient reaches z_e
    through (||q|| / ||e||) R, R = I - 2 r r^T + 2 q^ e^^T, r = (e^ + q^) / ||e^ + q^|| (hats: unit vectors), the
    rotation of e's direction onto q's in their plane, held constant (no gradient to z_q or through the norms)."""
    # In fp32 at least, even under autocast: bf16 would leave the value and the rotation visibly off.
    precision = torch.promote_types(z_e.dtype, torch.float32)
    with torch.autocast(device_type=z_e.device.type, enabled=False):
        e = z_e.to(precision)
        with torch.no_grad():
            q = z_q.to(precision)
            e_norm, q_norm = e.norm(dim=1, keepdim=True), q.norm(dim=1, keepdim=True)
            e_hat, q_hat = e / e_norm.clamp(min=NORM_FLOOR), q / q_norm.clamp(min=NORM_FLOOR)
            # Opposite directions have no unique plane: r = 0 there, and R e = -e + 2 ||e|| q^ still lands on q.
            r = F.normalize(e_hat + q_hat, dim=1, eps=NORM_FLOOR)
            scale = q_norm / e_norm.clamp(min=NORM_FLOOR)
        # R e with e live: e - 2 r (r.e) + 2 q^ (e^.e); e^.e is ||e||, but its gradient is e^, as R's last term says.
        rotated = e - 2 * r * (r * e).sum(1, keepdim=True) + 2 * q_hat * (e_hat * e).sum(1, keepdim=True)
        rotated = scale * rotated
        # The value is z_q to the last bit (R e = q up to rounding, and exactly where e = 0, whose R e is 0).
        return (rotated + (q - rotated).detach()).to(z_e.dtype)


def pass_gradient(z_e: Tensor, z_q: Tensor, estimator: str) -> Tensor:
    """z_q (B, D, H, W) as the decoder reads it, its gradient reaching z_e by `estimator`, one of ESTIMATORS."""
    if estimator == "rotation":
        return rotation_trick(z_e, z_q)
    # straight-through estimator: the forward pass uses z_q, the backward pass copies the gradient to z_e.
    return z_e + (z_q - z_e).detach()
