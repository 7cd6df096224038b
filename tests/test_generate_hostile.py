"""generate.py against hostile input: code files that lie about their size or hold odd tensors, writes that fail half
way, names that are folders, flags out of range. Each gives one line, and no file is left new or half replaced."""
import errno
import io
import os
import random
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluate
import generate
import options
from gaussian import GaussianBottleneck
from helpers import blob_images, tiny_run_in
from pixel_distributions import images_to_inputs
from vqmnist.checkpoints.format import save_checkpoint
from vqmnist.checkpoints.loading import load_model
from vqmnist.configuration import limits
from vqmnist.configuration.errors import UserError
from vqmnist.io.code_files import load_codes

K = 16  # the tiny run's codebook


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """The checkpoint of a tiny one-epoch VQ run with its prior, shared by the module's tests."""
    return tiny_run_in(tmp_path_factory.mktemp("tiny_vq")) / "models" / "tiny" / "best.pt"


@pytest.fixture(scope="module")
def varied_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model with its K codes set to the encoder's outputs at K positions of the blob digits, so that
    different digits get different codes, which a seed then changes, whatever the tiny training made of them (on a
    CPU without bf16 it can end with one code for everything)."""
    checkpoint = torch.load(tiny_model, weights_only=True)
    model = load_model(tiny_model).model
    with torch.no_grad():
        z_e = model.to_code_space(model.encoder(images_to_inputs(blob_images(K, seed=6))))  # (K, D, 7, 7)
        # the centre of each digit, (K, D): a different blob's features for every code
        model.bottleneck.embedding.weight.copy_(z_e[:, :, 3, 3])
    path = tmp_path_factory.mktemp("varied") / "varied.pt"
    save_checkpoint(path, {**checkpoint, "model": model.state_dict()})
    return path


@pytest.fixture(scope="module")
def model(tiny_model):
    return load_model(tiny_model).model


def run_generate(*flags):
    generate.main(generate.build_parser().parse_args(list(flags)))


def grids(count: int, dtype="<i8", seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, K, (count, 7, 7)).astype(dtype)


def write_npy_header(path: Path, shape: tuple, descr: str = "<i8", data: bytes = b"") -> None:
    with open(path, "wb") as file:
        np.lib.format.write_array_header_1_0(file, {"descr": descr, "fortran_order": False, "shape": shape})
        file.write(data)


# --- code files for --input codes ---

@pytest.mark.parametrize("shape, data_grids", [
    ((10 ** 11, 7, 7), 1),  # numpy.load would allocate 39 TB
    ((3, 7, 7), 2),  # one grid cut off the end
    ((2 ** 62, 7, 7), 0),  # more bytes than an int64 counts
])
def test_a_npy_header_claiming_more_than_the_file_holds_is_one_line(shape, data_grids, model, tmp_path):
    path = tmp_path / "codes.npy"
    write_npy_header(path, shape, data=grids(data_grids).tobytes())
    claimed = shape[0] * 7 * 7 * 8
    with pytest.raises(UserError, match=f"claims {shape[0]:,} code grids, {claimed:,} bytes, but the file holds "
                                        f"{data_grids * 49 * 8:,}"):
        load_codes(path, model.bottleneck.num_embeddings, 100)


@pytest.mark.parametrize("dtype", [">i8", ">i4", ">i2", "i1", "u1", "<u2", ">u2", "<u4", "<u8", ">u8", "<i4"])
@pytest.mark.parametrize("order", ["C", "F"])
def test_npy_codes_of_any_integer_type_and_order_load_exactly(dtype, order, model, tmp_path):
    original = grids(130, dtype)
    np.save(tmp_path / "codes.npy", np.asarray(original, order=order))
    loaded = load_codes(tmp_path / "codes.npy", model.bottleneck.num_embeddings, 100)
    expected = [[[int(value) for value in row] for row in grid] for grid in original[:100]]
    assert loaded.dtype == torch.int64 and loaded.tolist() == expected


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.uint16, torch.uint32, torch.uint64])
def test_pt_codes_of_any_integer_type_load_exactly(dtype, model, tmp_path):
    original = grids(7)
    torch.save(torch.from_numpy(original).to(dtype), tmp_path / "codes.pt")
    assert load_codes(tmp_path / "codes.pt", model.bottleneck.num_embeddings, 100).tolist() == original.tolist()


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_only_the_hundred_grids_used_are_read_and_checked(suffix, model, tmp_path):
    original = grids(150)
    original[100:] = 2 ** 40  # out of range, but never decoded
    path = tmp_path / f"codes{suffix}"
    np.save(path, original) if suffix == ".npy" else torch.save(torch.from_numpy(original), path)
    assert load_codes(path, model.bottleneck.num_embeddings, 100).tolist() == original[:100].tolist()


@pytest.mark.parametrize("dtype, value", [("<u8", 2 ** 64 - 1), (">u8", 2 ** 63), (">i8", -(2 ** 63)),
                                          (">i4", K)])
def test_indices_out_of_range_are_named_exactly_in_any_integer_type(dtype, value, model, tmp_path):
    original = grids(3, dtype)
    original[1, 2, 3] = value
    np.save(tmp_path / "codes.npy", original)
    low, high = min(value, int(original.min())), max(value, int(original.max()))
    with pytest.raises(UserError, match=f"holds indices from {low} to {high}, but the model has codes 0 to {K - 1}"):
        load_codes(tmp_path / "codes.npy", model.bottleneck.num_embeddings, 100)


def sparse_coo():
    return torch.from_numpy(grids(3)).to_sparse()


def nested():
    return torch.nested.nested_tensor([torch.zeros(7, 7, dtype=torch.long)] * 2, layout=torch.jagged)


@pytest.mark.parametrize("content, message", [
    (sparse_coo, "holds a torch.sparse_coo tensor: code grids are a dense tensor"),
    (nested, "holds a torch.jagged tensor"),
    (lambda: torch.zeros(3, 7, 7, dtype=torch.long, device="meta"), "tensor on the meta device, which has no values"),
    (lambda: {"codes": torch.zeros(3, 7, 7, dtype=torch.long)}, "one integer tensor .*, not a dict"),
    (lambda: torch.zeros(3, 7, 7, dtype=torch.bool), "one integer tensor .*, not torch.bool"),
])
def test_a_pt_file_of_anything_but_a_dense_integer_tensor_is_one_line(content, message, model, tmp_path, recwarn):
    torch.save(content(), tmp_path / "codes.pt")
    recwarn.clear()
    with pytest.raises(UserError, match=message):
        load_codes(tmp_path / "codes.pt", model.bottleneck.num_embeddings, 100)
    assert [str(warning.message) for warning in recwarn] == [], "a warning would be a second line"


def corrupted(content: bytes, seed: int) -> bytes:
    """content cut short (every third seed) or with up to 20 bytes overwritten at random."""
    rng = random.Random(seed)
    if seed % 3 == 0:
        return content[:rng.randrange(len(content))]
    damaged = bytearray(content)
    for _ in range(rng.randrange(1, 21)):
        damaged[rng.randrange(len(damaged))] = rng.randrange(256)
    return bytes(damaged)


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_damaged_code_files_load_or_are_one_line(suffix, model, tmp_path):
    buffer = io.BytesIO()
    np.save(buffer, grids(3)) if suffix == ".npy" else torch.save(torch.from_numpy(grids(3)), buffer)
    path, refused = tmp_path / f"codes{suffix}", 0
    for seed in range(300):
        path.write_bytes(corrupted(buffer.getvalue(), seed))
        try:
            loaded = load_codes(path, model.bottleneck.num_embeddings, 100)
        except UserError as error:
            refused += 1
            assert "\n" not in str(error)
        else:
            assert loaded.dtype == torch.int64 and loaded.shape[1:] == (7, 7)
            assert 0 <= int(loaded.min()) and int(loaded.max()) < K
    assert refused > 100


# --- writes that fail ---

def raises(error):
    def fail(*_args, **_kwargs):
        raise error

    return fail


def half_written_then(error):
    """A writer (numpy.save or torch.save) that writes part of its file and then fails with error, as a disk that
    fills up mid-write does."""
    def write(*args, **_kwargs):
        next(arg for arg in args if hasattr(arg, "write")).write(b"\x93NUMPY half a file")
        raise error

    return write


NO_SPACE = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("suffix, writer, error, message", [
    (".npy", "numpy", NO_SPACE, "no space left on the device holding out: free space, then run generate.py again"),
    # numpy's tofile reports a disk that fills up mid-write in these words, without an errno
    (".npy", "numpy", OSError("4900 requested and 2544 written"), "no space left on the device holding out"),
    (".npy", "numpy", PermissionError(errno.EACCES, "Permission denied"), "cannot write out/codes.npy: Permission"),
    (".pt", "torch", NO_SPACE, "no space left on the device holding out"),
    (".pt", "torch", RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0"),
     "no space left on the device holding out"),
    (".npy", "png", NO_SPACE, "no space left on the device holding generatedImages"),
])
def test_a_failed_write_leaves_no_new_or_replaced_file(suffix, writer, error, message, varied_model, tiny_mnist,
                                                       tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("out").mkdir()
    flags = ["--model", str(varied_model), "--input", "MNIST", "--data-folder", str(tiny_mnist), "--filename", "recon",
             "--save-codes", f"out/codes{suffix}", "--overwrite"]  # each run after the first replaces the codes
    outputs = [Path("generatedImages/recon.png"), Path("generatedImages/recon_input.png"), Path(f"out/codes{suffix}")]

    def failing_run():
        with monkeypatch.context() as patch:
            if writer == "png":
                patch.setattr(generate, "save_image", raises(error))
            else:
                patch.setattr(np if writer == "numpy" else torch, "save", half_written_then(error))
            with pytest.raises(UserError, match=message):
                run_generate(*flags, "--seed", "1")

    failing_run()
    assert not any(path.exists() for path in outputs)
    run_generate(*flags)
    before = [path.read_bytes() for path in outputs]
    failing_run()
    assert [path.read_bytes() for path in outputs] == before
    assert sorted(os.listdir("out")) == [f"codes{suffix}"]
    assert sorted(os.listdir("generatedImages")) == ["recon.png", "recon_input.png"], "no temporary file left"
    run_generate(*flags, "--seed", "1")
    assert all(path.read_bytes() != old for path, old in zip(outputs, before)), "the failing run would change each"


def test_a_failed_rename_of_the_codes_replaces_no_picture(tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    flags = ["--model", str(tiny_model), "--input", "noise", "--filename", "noise", "--save-codes", "codes.npy",
             "--overwrite"]
    run_generate(*flags)
    before = Path("generatedImages/noise.png").read_bytes()
    replace = os.replace

    def refuse_codes(source, target):
        if Path(target).name == "codes.npy":
            raise PermissionError(errno.EACCES, "Permission denied", source, None, target)
        replace(source, target)

    monkeypatch.setattr(os, "replace", refuse_codes)
    with pytest.raises(UserError, match="cannot write codes.npy: Permission denied"):
        run_generate(*flags, "--seed", "1")
    assert Path("generatedImages/noise.png").read_bytes() == before


@pytest.mark.parametrize("save_codes, message", [
    ("folder.npy", "folder.npy is a folder: pick another --save-codes"),
    ("missing/codes.npy", "cannot write missing/codes.npy: missing is not a folder"),
    ("a_file/codes.npy", "cannot write a_file/codes.npy: a_file is not a folder"),
    ("codes.npy/", "--save-codes codes.npy/ names a folder"),
    ("model.pt", "--save-codes model.pt is the --model checkpoint"),
])
def test_a_save_codes_place_that_cannot_take_the_file_fails_before_any_write(save_codes, message, tiny_model,
                                                                             tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("folder.npy").mkdir()
    Path("a_file").write_text("a file where a folder should be")
    Path("model.pt").write_bytes(tiny_model.read_bytes())
    with pytest.raises(UserError, match=message):
        run_generate("--model", "model.pt", "--input", "noise", "--save-codes", save_codes)
    assert Path("model.pt").read_bytes() == tiny_model.read_bytes()
    assert list(Path("generatedImages").iterdir()) == []


@pytest.mark.parametrize("folder", ["noise.png", "noise_input.png"])
def test_a_grid_name_that_is_a_folder_fails_before_any_write(folder, tiny_model, tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "generatedImages" / folder).mkdir(parents=True)
    with pytest.raises(UserError, match=f"generatedImages/{folder} is a folder: pick another --filename"):
        run_generate("--model", str(tiny_model), "--input", "MNIST", "--data-folder", str(tiny_mnist), "--filename",
                     "noise", "--save-codes", "codes.npy")
    assert not Path("codes.npy").exists() and [path.name for path in Path("generatedImages").iterdir()] == [folder]


# --- names and hints ---

@pytest.mark.parametrize("name", [".", "./", "sweep/", "sweep/.", ".png", "sweep/.PNG", "a//"])
def test_a_filename_without_a_file_name_is_a_one_line_flag_error(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        generate.build_parser().parse_args(["--filename", name])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and error.count("\n") == 1 and "argument --filename: give a " in error


@pytest.mark.parametrize("name", ["recon", "sweep/seed1", "v1.2", "recon.png", ".hidden"])
def test_plain_file_names_still_pass(name):
    assert generate.build_parser().parse_args(["--filename", name]).filename == name


def test_the_decode_hint_can_be_pasted_into_a_shell(tiny_model, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "my runs"
    folder.mkdir()
    monkeypatch.chdir(folder)
    path = "codes of 'noise'.npy"
    run_generate("--model", str(tiny_model), "--input", "noise", "--save-codes", path)
    hint = capsys.readouterr().out.strip().splitlines()[-1]
    words = shlex.split(hint.partition("decode them with ")[2])
    assert words[:3] == ["--input", "codes", "--codes"] and words[3:] == [path]
    run_generate("--model", str(tiny_model), "--filename", "decoded", *words)
    assert (folder / "generatedImages" / "decoded.png").is_file()


# --- flag bounds ---

@pytest.mark.parametrize("flag, value", [
    ("--seed", str(2 ** 70)), ("--seed", "-1"), ("--seed", str(limits.MAX_SEED + 1)),
    ("--temperature", "1e-300"), ("--temperature", "0"), ("--temperature", "inf"), ("--temperature", "nan"),
    ("--temperature", str(limits.MAX_TEMPERATURE * 1.01)), ("--temperature", str(limits.MIN_TEMPERATURE * 0.99)),
    ("--guidance", "1e308"), ("--guidance", "-0.1"), ("--guidance", "nan"), ("--guidance", "inf"),
    ("--guidance", str(limits.MAX_GUIDANCE + 1)),
    ("--hidden-size", "0"), ("--hidden-size", str(10 ** 9)), ("--k", "0"), ("--k", str(options.MAX_CODES + 1)),
    ("--top-k", "-1"), ("--top-k", str(options.MAX_CODES + 1)),
    ("--top-p", "0"), ("--top-p", "-0.5"), ("--top-p", "1.01"), ("--top-p", "nan"),
])
def test_flags_out_of_range_are_one_line(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        generate.build_parser().parse_args([flag, value])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and error.count("\n") == 1 and f"argument {flag}: must be" in error


def test_flag_bounds_are_in_the_help_and_accepted():
    largest = {"--seed": limits.MAX_SEED, "--temperature": limits.MAX_TEMPERATURE,
               "--guidance": limits.MAX_GUIDANCE, "--k": options.MAX_CODES,
               "--hidden-size": options.MAX_WIDTH}
    smallest = {"--seed": 0, "--temperature": limits.MIN_TEMPERATURE, "--guidance": 0, "--k": 1, "--hidden-size": 1}
    parser = generate.build_parser()
    helps = {action.option_strings[0]: action.help for action in parser._actions if action.option_strings}
    for flag in largest:
        for value in (smallest[flag], largest[flag]):
            assert vars(parser.parse_args([flag, str(value)]))[flag[2:].replace("-", "_")] == value
        bound = f"{largest[flag]:,}" if isinstance(largest[flag], int) else f"{largest[flag]:g}"
        assert f"{smallest[flag]:g} to {bound}" in helps[flag] and "(default: " in helps[flag], flag


def test_the_default_temperature_is_one_for_codes_and_continuous_latents_alike():
    """generate.py's and evaluate.py's --temperature defaults to 1 whatever the bottleneck, as their help says; at 1 a
    Gaussian's latents are the N(0, I) draws it was trained with."""
    for script in (generate, evaluate):
        parser = script.build_parser()
        helps = {action.option_strings[0]: action.help for action in parser._actions if action.option_strings}
        assert parser.parse_args([]).temperature == 1.0, script.__name__
        assert helps["--temperature"].endswith("1 changes neither (default: 1.0)"), script.__name__
    draws = GaussianBottleneck(4).sample_latents((3, 7, 7), 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(draws, torch.randn(3, 4, 7, 7, generator=torch.Generator().manual_seed(0)))


def test_sampling_at_the_flag_bounds_gives_a_picture(tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # The corner where logits / temperature, guided, are largest: the one that would overflow first.
    run_generate("--model", str(tiny_model), "--input", "random", "--temperature", str(limits.MIN_TEMPERATURE),
                 "--guidance", str(limits.MAX_GUIDANCE), "--seed", str(limits.MAX_SEED), "--save-codes", "codes.npy")
    codes = np.load("codes.npy")
    assert codes.shape == (100, 7, 7) and 0 <= codes.min() and codes.max() < K
