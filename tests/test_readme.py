"""The Python example on README.md's front page runs as written, on the committed pretrained model and data."""
import re
from pathlib import Path

import torch

REPOSITORY = Path(__file__).resolve().parent.parent


def readme_example() -> str:
    """The first ```python block of README.md."""
    return re.search(r"^```python\n(.*?)^```", (REPOSITORY / "README.md").read_text(), re.MULTILINE | re.DOTALL)[1]


def test_the_readme_example_encodes_samples_and_decodes(monkeypatch):
    monkeypatch.chdir(REPOSITORY)  # the example's paths are the repository's
    names = {}
    exec(compile(readme_example(), "README.md", "exec"), names)
    codes, grids, pixels = names["codes"], names["grids"], names["pixels"]
    assert codes.shape == (8, 7, 7) and codes.dtype == torch.int64 and 0 <= codes.min() and codes.max() < 512
    assert grids.shape == (4, 7, 7) and 0 <= grids.min() and grids.max() < 512
    assert pixels.shape == (4, 1, 28, 28) and 0 <= pixels.min() and pixels.max() <= 1
    # The codes are the autoencoder's own: decoding them gives back the test digits, close to their pixels.
    model, images = names["model"], names["images"]
    reconstructed = model.to_pixels(model.decode(codes))
    assert (reconstructed - images[:8].unsqueeze(1).float() / 255).pow(2).mean() < 0.01
