"""Code-grid files (.npy, .pt) read back checked: a hostile or broken file is refused in one line, not loaded."""
import math
import os
import pickle
import shlex
import tokenize
from pathlib import Path

import numpy as np
import torch

from vqmnist.configuration.errors import UserError
from vqmnist.io.files import read_torch_quietly

CODE_GRID_SIDE = 7  # a code grid is (7, 7): the latent grid of a 28x28 digit
TORCH_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32,
                        torch.uint64)
# Version 3.0 differs from 2.0 only in allowing a UTF-8 header, which an integer array's plain-ASCII header never needs.
NPY_HEADER_READERS = {1: np.lib.format.read_array_header_1_0, 2: np.lib.format.read_array_header_2_0,
                      3: np.lib.format.read_array_header_2_0}
# What a hostile or broken file can make torch.load or numpy's header parser raise instead of loading (numpy's
# parser runs a damaged header through tokenize).
UNREADABLE = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, TypeError, IndexError, KeyError,
              NotImplementedError, OverflowError, MemoryError, SyntaxError, tokenize.TokenError)


def grid_shape(levels: int) -> tuple[int, ...]:
    """The shape of one code grid: (7, 7), or (L, 7, 7) with L > 1 codes a position (a residual VQ's levels)."""
    return (CODE_GRID_SIDE, CODE_GRID_SIDE) if levels == 1 else (levels, CODE_GRID_SIDE, CODE_GRID_SIDE)


def shown_shape(levels: int) -> str:
    return str(("N", *grid_shape(levels))).replace("'", "")


def refuse_unless_integer(path: Path, integer_type: bool, what: str, levels: int) -> None:
    if not integer_type:
        raise UserError(f"{path} must hold one integer tensor of code indices {shown_shape(levels)}, not {what}")


def refuse_unless_grid_shape(path: Path, shape: tuple, levels: int) -> None:
    if tuple(shape[1:]) != grid_shape(levels) or len(shape) != 1 + len(grid_shape(levels)) or shape[0] < 1:
        raise UserError(f"{path} holds a tensor of shape {tuple(shape)}: code grids have shape {shown_shape(levels)}, "
                        "N >= 1")


def read_npy_grids(path: Path, first: int, levels: int) -> np.ndarray:
    """The `first` grids of a .npy file, in its own dtype. Its header is checked before any values are
    read: a header may claim any shape, and numpy.load would allocate it all before finding the file too short."""
    with open(path, "rb") as file:
        major, _ = np.lib.format.read_magic(file)
        if major not in NPY_HEADER_READERS:
            raise ValueError(f".npy format version {major}")
        shape, fortran_order, dtype = NPY_HEADER_READERS[major](file)
        refuse_unless_integer(path, dtype.kind in "iu", str(dtype), levels)
        refuse_unless_grid_shape(path, shape, levels)
        offset = file.tell()
        claimed, held = math.prod(shape) * dtype.itemsize, os.fstat(file.fileno()).st_size - offset
    if claimed > held:
        raise UserError(f"{path}'s header claims {shape[0]:,} code grids, {claimed:,} bytes, but the file holds "
                        f"{held:,}: it is cut short or damaged; write it again (numpy.save or generate.py "
                        "--save-codes)")
    # A memory map reads only the pages of the grids used, also when a Fortran-order file spreads them out.
    grids = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran_order else "C")
    return np.array(grids[:first])


def read_pt_grids(path: Path, first: int, levels: int) -> np.ndarray:
    """The `first` grids of a .pt file's one tensor, in its own dtype."""
    codes = read_torch_quietly(path)  # checked below
    if not isinstance(codes, torch.Tensor):
        refuse_unless_integer(path, False, f"a {type(codes).__name__}", levels)
    refuse_unless_integer(path, codes.dtype in TORCH_INTEGER_DTYPES, str(codes.dtype), levels)
    # A sparse or nested tensor stores some of its values and the indices of those, a meta tensor none at all.
    if codes.layout != torch.strided:
        raise UserError(f"{path} holds a {codes.layout} tensor: code grids are a dense tensor with a value at every "
                        "index; save codes.to_dense() instead")
    if codes.device.type != "cpu":
        raise UserError(f"{path} holds a tensor on the {codes.device.type} device, which has no values: save the code "
                        "grids themselves")
    refuse_unless_grid_shape(path, tuple(codes.shape), levels)
    return codes[:first].numpy()


def load_codes(path, num_embeddings: int, first: int, levels: int = 1) -> torch.Tensor:
    """The `first` code grids of a .npy or .pt file as int64, refused in one line unless they are integer
    grids (N, 7, 7) (or (N, L, 7, 7) with `levels` L > 1) of indices below K. Only those grids are read and
    checked: the rest are never used. Every integer type converts exactly, big-endian and unsigned 64-bit included,
    since the check runs in the file's own dtype."""
    path = Path(path)
    if not path.is_file():
        what = ("is a folder, not a code file" if path.is_dir() else "is not a regular file" if path.exists()
                else "does not exist")
        raise UserError(f"{path} {what}: write a code file with generate.py --save-codes {shlex.quote(str(path))}")
    try:
        read = read_npy_grids if path.suffix.lower() == ".npy" else read_pt_grids
        grids = read(path, first, levels)
    except UNREADABLE as error:
        raise UserError(f"{path} is not a readable code file ({type(error).__name__}): write one with "
                        "generate.py --save-codes") from None
    low, high = int(grids.min()), int(grids.max())
    if low < 0 or high >= num_embeddings:
        raise UserError(f"{path} holds indices from {low} to {high}, but the model has codes 0 to {num_embeddings - 1}")
    return torch.from_numpy(grids.astype(np.int64))
