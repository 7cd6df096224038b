"""vqvae.py under torchrun: two gloo processes on CPU train on disjoint shards, keep bit-identical codebooks,
write one checkpoint that generate.py loads, and stop and resume together."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import generate
from helpers import TINY_PRIOR, write_tiny_mnist
from vqmnist.io import data

REPOSITORY = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "distributed_worker.py"
FLAGS = ("--val-size", "64", "--batch-size", "32", "--hidden-size", "8", "--k", "16", "--log-interval", "1",
         "--output-folder", "ddp", *TINY_PRIOR)


def torchrun(tmp_path, data_folder, *flags, stop_at_step=0):
    """Run the worker in 2 processes with torchrun, in tmp_path; returns the CompletedProcess."""
    checksums = tmp_path / "checksums.json"
    checksums.write_text(json.dumps(data.MNIST_MD5))  # the tiny files' MD5s, patched in by the fixture
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
               str(checksums), str(tmp_path), str(stop_at_step), "--data-folder", str(data_folder), *FLAGS, *flags]
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The two-process run of two epochs, on tiny MNIST files of its own: (its folder, its CompletedProcess). Run
    once: one test checks what it wrote, the other resumes a stopped run to its weights."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(data, "MNIST_MD5", write_tiny_mnist(folder / "data" / "MNIST" / "raw"))
        return folder, torchrun(folder, folder / "data", "--num-epochs", "2")


def test_two_processes_share_one_codebook_and_write_one_usable_checkpoint(uninterrupted, tiny_mnist, tmp_path,
                                                                          monkeypatch):
    folder, result = uninterrupted
    assert result.returncode == 0, result.stderr[-2000:]
    codebooks = [torch.load(folder / f"codebook{rank}.pt") for rank in (0, 1)]
    assert torch.equal(codebooks[0], codebooks[1]), "the processes' codebooks differ"
    assert result.stdout.count("training on cpu x 2 processes") == 1, "more than process 0 printed"

    checkpoint = torch.load(folder / "models" / "ddp" / "last.pt", weights_only=True)
    # 256 training images: 128 per process, 4 batches of 32 per epoch.
    assert checkpoint["epoch"] == 2 and checkpoint["step"] == 8
    assert torch.equal(checkpoint["model"]["bottleneck.embedding.weight"], codebooks[0])
    assert "prior" in torch.load(folder / "models" / "ddp" / "best.pt", weights_only=True)

    monkeypatch.chdir(tmp_path)
    for mode in ("MNIST", "random"):
        generate.main(generate.build_parser().parse_args(
            ["--model", str(folder / "models" / "ddp" / "best.pt"), "--input", mode, "--data-folder",
             str(tiny_mnist)]))
        assert (tmp_path / "generatedImages" / f"{mode}.png").is_file()


def test_sigterm_stops_both_processes_and_resume_under_torchrun_matches_an_uninterrupted_run(uninterrupted,
                                                                                             tiny_mnist, tmp_path):
    (uninterrupted, result), interrupted = uninterrupted, tmp_path / "interrupted"
    interrupted.mkdir()
    assert result.returncode == 0, result.stderr[-2000:]

    stopped = torchrun(interrupted, tiny_mnist, "--num-epochs", "2", stop_at_step=3)
    assert stopped.returncode != 0
    assert stopped.stderr.count("stopped by SIGTERM at step 3") == 1, stopped.stderr[-2000:]
    assert torch.load(interrupted / "models" / "ddp" / "last.pt", weights_only=True)["step"] == 3
    resumed = torchrun(interrupted, tiny_mnist, "--num-epochs", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    expected = torch.load(uninterrupted / "models" / "ddp" / "last.pt", weights_only=True)["model"]
    actual = torch.load(interrupted / "models" / "ddp" / "last.pt", weights_only=True)["model"]
    for name, tensor in expected.items():
        assert torch.allclose(tensor.double(), actual[name].double(), rtol=0, atol=1e-6), name
    assert torch.equal(torch.load(interrupted / "codebook0.pt"), torch.load(interrupted / "codebook1.pt"))


def update_on_half_batch(rank: int, store_path: str, flat: torch.Tensor, codes: torch.Tensor, results: str):
    """In one of two gloo processes: one EMA step of a quantizer on this process's half of the batch."""
    import torch.distributed as dist

    from vector_quantizer import VectorQuantizer

    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=2)
    quantizer = VectorQuantizer(len(codes), codes.shape[1], 0.25, codebook_update="ema", ema_decay=0.9,
                                restart_threshold=0.0)
    quantizer.set_codebook(codes, count=1.0)
    half = flat.view(2, -1, *flat.shape[1:])[rank]  # (B/2, D, H, W)
    quantizer(half)
    torch.save({"weight": quantizer.embedding.weight.detach(), "cluster_size": quantizer.cluster_size},
               f"{results}/rank{rank}.pt")
    dist.destroy_process_group()


def test_the_codebook_update_of_two_half_batches_is_that_of_the_whole_batch(tmp_path):
    from vector_quantizer import VectorQuantizer

    generator = torch.Generator().manual_seed(0)
    z_e = torch.randn(8, 4, 3, 3, generator=generator)
    codes = torch.randn(6, 4, generator=generator)
    torch.multiprocessing.spawn(update_on_half_batch, nprocs=2,
                                args=(str(tmp_path / "store"), z_e, codes, str(tmp_path)))
    whole = VectorQuantizer(6, 4, 0.25, codebook_update="ema", ema_decay=0.9, restart_threshold=0.0)
    whole.set_codebook(codes, count=1.0)
    whole(z_e)
    for rank in (0, 1):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(result["weight"], whole.embedding.weight.detach())
        torch.testing.assert_close(result["cluster_size"], whole.cluster_size)
