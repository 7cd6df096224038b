"""benchmarks/speed.py times both loops, and reads what vqvae.py did from the run's run.json, not its printed lines;
benchmarks/study.py names each run once, resumes from what it kept, and tabulates every column."""
import contextlib
import importlib
import io
import math
import json
import re
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import tiny_run_in, train_tiny
from vqmnist.configuration.errors import RunStopped

ROOT = Path(__file__).resolve().parent.parent


def load_benchmark(name: str):
    """benchmarks/NAME.py as a module, as `python -m benchmarks.NAME` imports it."""
    return importlib.import_module(f"benchmarks.{name}")


def table_rows(output: str, header: str) -> list[list[str]]:
    """The cells of the markdown table under the line starting with header."""
    lines = output[output.index(header):].splitlines()[2:]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append(line.strip("| ").split(" | "))
    return rows


def loop_kind(name: str) -> str:
    """"prior, plain (nn.TransformerEncoder, ...)" -> "prior plain"."""
    model, rest = name.split(", ", 1)
    return f"{model} {rest.split()[0]}"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, str]:
    """The default tiny run's folder and what it printed, trained once for the tests that only read it."""
    with contextlib.redirect_stdout(io.StringIO()) as output:
        folder = tiny_run_in(tmp_path_factory.mktemp("tiny_run"))
    return folder, output.getvalue()


def test_speed_benchmark_tables_every_loop_against_the_limit(tiny_mnist, capsys, monkeypatch):
    speed = load_benchmark("speed")
    # The limit's products at 512 instead of 2048: a 2048-square bf16 product takes most of a minute on a CPU
    # without bf16 in hardware; the table reads the limit the same way whatever the size.
    monkeypatch.setattr(speed, "MATMUL_SIZE", 512)
    speed.main(speed.build_parser().parse_args(["--data-folder", str(tiny_mnist), "--steps", "2", "--warmup", "1",
                                                "--repeats", "1", "--batch-size", "8", "--prior-batch-size", "8",
                                                "--beside-busy"]))
    output = capsys.readouterr().out
    rows = {loop_kind(row[0]): row for row in table_rows(output, "| loop | precision")}
    # bf16's limit is measured where a loop ran in bf16, and only there.
    in_bf16 = any(row[1] == "bf16" for row in rows.values())
    limits = re.search(r"limit: .* ([\d,]+\.\d) GFLOP/s in fp32 " + (r"and ([\d,]+\.\d) in bf16" if in_bf16
                                                                    else r"\(no loop ran in bf16\)"), output)
    assert limits and all(float(limit.replace(",", "")) > 0 for limit in limits.groups())
    assert sorted(rows) == ["autoencoder plain", "autoencoder project", "prior plain", "prior project"]
    for name, (_, precision, speed_cell, gflop_per_step, gflops, fraction, versus) in rows.items():
        assert precision in ("fp32", "bf16") and float(gflop_per_step) > 0
        assert re.fullmatch(r"[\d,]+ (img|token)/s", speed_cell) and re.fullmatch(r"\d+%", fraction)
        assert versus == "1.00x" if "plain" in name else re.fullmatch(r"\d+\.\d\dx", versus)
    busy = table_rows(output, "| loop | alone,")
    assert [row[0] for row in busy] == [rows["autoencoder project"][0], rows["prior project"][0]]
    assert all(re.fullmatch(r"[\d,]+ (img|token)/s, \d+\.\d\dx", cell) for row in busy for cell in row[2:])


def test_the_profile_names_the_costliest_operators_and_times_both_attentions(tiny_mnist, capsys):
    speed = load_benchmark("speed")
    speed.main(speed.build_parser().parse_args(["--data-folder", str(tiny_mnist), "--steps", "2", "--prior-batch-size",
                                                "4", "--profile", "prior-project"]))
    output = capsys.readouterr().out
    assert "prior, project (as vqvae.py), 2 steps" in output and "aten::" in output and "Self CPU" in output
    attentions = table_rows(output, "| attention |")
    assert [row[0] for row in attentions] == ["written out, prior.attention",
                                              "F.scaled_dot_product_attention(is_causal=True)"]
    assert all(float(milliseconds) > 0 for row in attentions for milliseconds in row[1:])


@pytest.mark.parametrize("loop", ["prior-plain", "prior-project"])
def test_the_prior_loops_flops_are_those_of_its_products(loop):
    """FlopCounterMode's count against a hand count: each linear layer's weights meet every token three times
    (forward, and the two products of the backward), 2 FLOPs a multiply-add; attention adds its 49 x 49 products."""
    from benchmarks import loops
    from prior import CodePrior, PriorConfig
    speed, config = load_benchmark("speed"), PriorConfig()
    arguments = speed.build_parser().parse_args(["--steps", "1", "--warmup", "0", "--repeats", "1"])
    built = (loops.prior_plain(config, 4, torch.device("cpu")) if loop == "prior-plain"
             else loops.prior_project(config, 4, torch.device("cpu"), amp=False))
    measured = speed.measure(built, arguments, torch.device("cpu"))
    linear = sum(m.weight.numel() for m in CodePrior(config).modules() if isinstance(m, torch.nn.Linear))
    tokens, length = built.items_per_step, config.grid_size ** 2
    attention = 3 * 2 * 2 * tokens * length * config.width * config.num_layers  # q k^T and weights v, fwd and bwd
    assert measured.flops_per_step == pytest.approx(6 * tokens * linear + attention, rel=0.02)
    assert measured.steps_per_second > 0


def test_speed_benchmark_reads_where_the_time_limit_stopped(tiny_mnist, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RunStopped) as stopped:
        train_tiny(tiny_mnist, "--time-limit", "1e-9")  # over after the first step
    where = load_benchmark("speed").stopped_at_limit(tmp_path / "models" / "tiny")
    assert where == "at step 1 (epoch 1, batch 1 of 4)"
    assert f"stopped at the --time-limit {where}" in str(stopped.value)


def test_speed_benchmark_reads_how_long_each_part_trained(tiny_run):
    folder, output = tiny_run
    autoencoder, prior = load_benchmark("speed").part_seconds(folder / "models" / "tiny")
    assert autoencoder > 0 and prior > 0
    assert f"autoencoder trained in {autoencoder:.0f} s" in output and f"prior ({prior:.0f} s" in output


def test_the_studies_share_the_default_run_and_name_each_run_once():
    study = load_benchmark("study")
    rows = [row for rows in study.STUDIES.values() for row in rows]
    assert sum(row.name == "default" for row in rows) == 4  # K = 512, D = 16 and the default VQ twice: one run
    by_name = {}
    for row in rows:
        assert by_name.setdefault(row.name, row.flags) == row.flags, f"{row.name} names two runs"
    assert [row.label for row in study.STUDIES["k"]] == ["K = 16", "K = 64", "K = 256", "K = 512 (default)", "K = 1024"]
    assert len(study.STUDIES["d"]) == 6 and len(study.STUDIES["bottleneck"]) == 6
    quantizers = study.STUDIES["quantizers"]
    assert len(quantizers) == 8 and {row.bottleneck for row in quantizers} <= set(study.MARKERS)
    # Each rotation-trick row is the row beside it with only the gradient changed.
    for plain, rotated in ((quantizers[0], quantizers[1]), (quantizers[2], quantizers[3])):
        assert rotated.flags == (*plain.flags, "--gradient", "rotation")


def fake_scores(bottleneck: str, rate) -> dict:
    samples = {"count": 1000, "prior_unconditional": {"recognisable": 0.5, "frechet_distance": 3.25},
               "real": {"recognisable": 0.99, "frechet_distance": 0.5}}
    codes = {"codes_used": 500, "num_embeddings": 512, "perplexity": 400.4} if bottleneck != "gaussian" else {
        "num_embeddings": None, "kl_bits": rate}
    return {"bottleneck": bottleneck, "test_mse": 0.0015, "psnr": 28.24, "ssim": 0.98765, **codes, "rate_bits": rate,
            "published_protocol": {"psnr": 29.125, "ssim": 0.99012}, "samples": samples,
            "seconds": {"autoencoder": 60.4, "prior": 100.6}}


def fake_scripts(tmp_path, commands: list, run_figures: dict, evaluation):
    """A stand-in for a benchmark's run(): vqvae.py writes run_figures to its run.json, evaluate.py prints
    evaluation(command) as JSON; each command is appended to commands."""

    def fake_run(command):
        commands.append(command)
        if command[0] == "vqvae.py":
            folder = tmp_path / "models" / command[command.index("--output-folder") + 1]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "run.json").write_text(json.dumps(run_figures))
            return ""
        return json.dumps(evaluation(command))

    return fake_run


def test_the_study_resumes_from_what_it_kept(tmp_path, monkeypatch):
    study = load_benchmark("study")
    monkeypatch.setattr(study, "ROOT", tmp_path)
    commands = []
    monkeypatch.setattr(study, "run_script", fake_scripts(tmp_path, commands, {"autoencoder": {"seconds": 5.0}},
                                                   lambda command: fake_scores("gaussian", 12.5)))
    args = study.build_parser().parse_args(["--study", "bottleneck", "--epochs", "2"])
    row = study.STUDIES["bottleneck"][-1]
    scores = study.train_and_score(row, args)
    assert commands[0][:3] == ["vqvae.py", "--output-folder", "study/gaussian0.01-e2-p2-s0"]
    assert commands[0][-4:] == ["--bottleneck", "gaussian", "--kl-weight", "0.01"] and commands[1][0] == "evaluate.py"
    assert scores["seconds"] == {"autoencoder": 5.0}
    assert study.train_and_score(row, args) == scores and len(commands) == 2, "kept scores are read back"
    model_dir = tmp_path / "models" / "study" / "gaussian0.01-e2-p2-s0"
    (model_dir / "scores.json").unlink()
    (model_dir / "last.pt").write_bytes(b"")
    study.train_and_score(row, args)
    assert "--resume" in commands[2] and "--overwrite" not in commands[2], "a stopped run goes on"
    # Each scoring also put the run's flags and scores on TensorBoard's hparams dashboard, in its log folder.
    accumulator = EventAccumulator(str(tmp_path / "logs" / "study" / "gaussian0.01-e2-p2-s0")).Reload()
    assert accumulator.Scalars("hparam/test_mse")[-1].value == pytest.approx(0.0015)
    assert accumulator.Scalars("hparam/psnr_8bit")[-1].value == pytest.approx(29.125)
    assert "_hparams_/experiment" in accumulator.summary_metadata


def test_the_study_table_has_every_column_and_the_plot_is_written(tmp_path):
    study = load_benchmark("study")
    rows = study.STUDIES["bottleneck"][1:4:2]  # the default VQ and a Gaussian VAE
    results = [fake_scores("vq", 150.25), fake_scores("gaussian", 42.0)]
    lines = study.table(rows, results)
    assert lines[2] == ("| default VQ (EMA, k-means++, restarts) | 0.00150 | 28.24 | 0.9877 | 29.12 / 0.9901 | "
                        "500/512 | 400 | 150.2 | 50.0% | 3.25 | 60 + 101 |")
    assert lines[3].startswith("| Gaussian VAE, KL weight 1 | 0.00150 | 28.24 | 0.9877 | 29.12 / 0.9901 | - | - | "
                               "42.0 |")
    residual = fake_scores("rvq", 300.0) | {"code_levels": 2, "codes_used": 1000}
    assert "| 1000/1024 |" in study.table(study.STUDIES["quantizers"][6:7], [residual])[2]
    assert "the floor, is 0.50" in lines[-1]
    study.plot(rows, results, "test", tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_likelihood_table_shows_each_bound_by_its_kind_and_the_plot_is_written(tmp_path):
    study = load_benchmark("study")
    rows = study.STUDIES["likelihood"]
    gaussian, vq = rows[0], rows[2]
    assert all("--decoder-output" in row.flags for row in rows) and len({row.name for row in rows}) == len(rows)
    discrete_bits = {"decoder": "logistic", "fitted_log_scale": None, "pixels_given_codes": 0.875,
                     "codes_learned_prior": 0.375, "codes_learned_prior_given_class": 0.3125,
                     "codes_uniform_prior": 0.5625, "learned_prior": 1.25, "learned_prior_given_class": 1.1875,
                     "uniform_prior": 1.4375}
    continuous_bits = {"decoder": "logistic", "fitted_log_scale": None, "negative_elbo": 1.5,
                       "reconstruction": 1.25, "kl": 0.25, "importance_weighted": 1.4375, "iw_samples": 8}
    results = [fake_scores("gaussian", 196.0) | {"bits_per_dim": continuous_bits},
               fake_scores("vq", 294.0) | {"bits_per_dim": discrete_bits}]
    lines = study.likelihood_table([gaussian, vq], results)
    assert lines[2] == ("| Gaussian VAE, D = 2 | 1.438 (k = 8) | 1.500 | 1.250 | 0.250 | 0.00150 | 29.12 | 50.0% | "
                        "3.25 | 60 + 101 |")
    assert lines[3] == ("| VQ, K = 32 | 1.250 (1.188) | 1.438 | 0.875 | 0.375 | 0.00150 | 29.12 | 50.0% | 3.25 | "
                        "60 + 101 |")
    # a kept scores.json from before the likelihood bounds cannot fill the likelihood table, and is scored again
    assert study.tabulable(vq, results[1]) and not study.tabulable(vq, fake_scores("vq", 294.0))
    study.plot([gaussian, vq], results, "test", tmp_path / "plot.png", likelihood=True)
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def fake_evaluation(seed: int) -> dict:
    conditional = {"recognisable": 0.975 + seed / 1000, "matches_class": 0.99 - seed / 100, "frechet_distance": 0.26}
    unconditional = {"recognisable": 0.96 - seed / 100, "frechet_distance": 0.39 - seed / 10}
    return {"test_mse": 0.00131, "psnr": 28.83, "codes_used": 512, "num_embeddings": 512, "rate_bits": 280.25,
            "samples": {"prior_conditional": conditional, "prior_unconditional": unconditional,
                        "real": {"frechet_distance": 0.13 + seed / 100}}}


def test_the_frontier_trains_each_preset_once_and_tabulates_each_seed(tmp_path, monkeypatch, capsys):
    frontier = load_benchmark("frontier")
    monkeypatch.setattr(frontier, "ROOT", tmp_path)
    commands = []
    monkeypatch.setattr(frontier, "run_script", fake_scripts(
        tmp_path, commands, {"autoencoder": {"seconds": 200.4}, "prior": {"seconds": 201}},
        lambda command: fake_evaluation(int(command[command.index("--seed") + 1]))))
    args = frontier.build_parser().parse_args(["--presets", "quality", "--seeds", "0", "1", "--out-dir",
                                               str(tmp_path / "docs")])
    frontier.main(args)
    assert commands[0][:5] == ["vqvae.py", "--output-folder", "frontier/quality", "--overwrite", "--device"]
    flags = frontier.PRESETS["quality"].flags
    assert tuple(commands[0][-len(flags):]) == flags
    assert [command[command.index("--seed") + 1] for command in commands[1:]] == ["0", "1"]
    row = (tmp_path / "docs" / "frontier.md").read_text().splitlines()[2]
    assert re.fullmatch(rf"\| quality \| `python vqvae\.py {re.escape(' '.join(flags))}` \| \d+ \(200 \+ 201\) \| "
                        r"0\.00131 \| 28\.83 \| 512/512 \| 280\.2 \| 97\.5%: 97\.5% / 97\.6% \| "
                        r"98\.0%: 99\.0% / 98\.0% \| 2\.00x: 2\.00x / 1\.86x \| 95\.0%: 96\.0% / 95\.0% \| "
                        r"3\.00x: 3\.00x / 2\.07x \|", row), row
    frontier.main(args)
    assert len(commands) == 3, "a trained and scored preset is read back"
    assert capsys.readouterr().out.count("| quality |") == 2


def test_prior_fit_tables_the_nll_of_each_split_as_the_prior_computes_it(tiny_run, tiny_mnist, capsys):
    model = tiny_run[0] / "models" / "tiny" / "best.pt"
    prior_fit = load_benchmark("prior_fit")
    prior_fit.main(prior_fit.build_parser().parse_args(["--model", str(model), "--data-folder", str(tiny_mnist),
                                                        "--train-grids", "100"]))
    rows = table_rows(capsys.readouterr().out, "| grids |")
    assert [row[:2] for row in rows] == [["training", "100"], ["validation", "64"], ["test", "120"]]
    rarest = torch.load(model, weights_only=True)["prior"]["model"]["class_frequencies"].min().item()
    for row in rows:
        given, summed_out, class_free = (float(cell) for cell in row[2:])
        # 49 codes of 16: each figure a positive cost below 49 * 2 log2(16); summing the class out costs at most
        # log2 of 1 / the rarest class's frequency more than being told it, per image (0.05: the table's rounding)
        assert 0 < given < 392 and 0 < class_free < 392
        assert 0 < summed_out <= given - math.log2(rarest) + 0.05


@pytest.mark.parametrize("frequencies, count, expected", [
    ([0.5, 0.25, 0.25], 8, [4, 2, 2]),
    ([0.45, 0.35, 0.2], 10, None),  # 4.5, 3.5, 2: a tie between the two halves, either way within one of its share
    ([0.125, 0.3, 0.575], 1000, [125, 300, 575]),
    ([1 / 3, 1 / 3, 1 / 3], 10, None),
])
def test_the_exact_mix_gives_each_class_its_rounded_share_in_a_random_order(frequencies, count, expected):
    sampling = load_benchmark("sampling")
    classes = sampling.exact_mix(torch.tensor(frequencies), count, torch.Generator().manual_seed(0))
    counts = torch.bincount(classes, minlength=len(frequencies)).tolist()
    assert len(classes) == count and sum(counts) == count
    shares = [frequency * count for frequency in frequencies]
    assert all(abs(got - share) < 1 for got, share in zip(counts, shares))
    if expected is not None:
        assert counts == expected
    if count >= 10:
        assert not torch.equal(classes, classes.sort().values), "in a random order"
