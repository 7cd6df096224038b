"""benchmarks/speed.py times both loops, and reads what vqvae.py did from the run's run.json, not its printed lines."""
import importlib.util
import re
from pathlib import Path

import pytest

from cli import RunStopped
from helpers import train_tiny

ROOT = Path(__file__).resolve().parent.parent


def load_speed_benchmark():
    spec = importlib.util.spec_from_file_location("speed", ROOT / "benchmarks" / "speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_speed_benchmark_times_both_loops(tiny_mnist, capsys):
    speed = load_speed_benchmark()
    speed.main(speed.build_parser().parse_args(["--data-folder", str(tiny_mnist), "--steps", "2", "--warmup", "1",
                                                "--repeats", "2"]))
    output = capsys.readouterr().out
    plain = float(re.search(r"\| plain .* \| ([\d,]+) \| [\d.]+ \|", output).group(1).replace(",", ""))
    project = float(re.search(r"\| project .* \| ([\d,]+) \| [\d.]+ \|", output).group(1).replace(",", ""))
    assert plain > 0 and project > 0
    assert re.search(r"speed-up: \d+\.\d\dx", output)


def test_speed_benchmark_reads_where_the_time_limit_stopped(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RunStopped) as stopped:
        train_tiny(tiny_mnist, "--time-limit", "1e-9")  # over after the first step
    where = load_speed_benchmark().stopped_at_limit(tmp_path / "models" / "tiny")
    assert where == "at step 1 (epoch 1, batch 1 of 4)"
    assert f"stopped at the --time-limit {where}" in str(stopped.value)


def test_speed_benchmark_reads_how_long_each_part_trained(tiny_mnist, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    train_tiny(tiny_mnist)
    output = capsys.readouterr().out
    autoencoder, prior = load_speed_benchmark().part_seconds(tmp_path / "models" / "tiny")
    assert autoencoder > 0 and prior > 0
    assert f"autoencoder trained in {autoencoder:.0f} s" in output and f"prior ({prior:.0f} s" in output
