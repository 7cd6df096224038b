"""Train a VQ-VAE on MNIST, then the prior over its codes.

Usage:
    python vqvae.py                                      # defaults: CPU, 10 epochs, then 8 of the prior, run "vqvae"
    python vqvae.py --resume                             # after Ctrl-C or SIGTERM: go on where it stopped
    python vqvae.py --time-limit 3600                    # stop and save after an hour; --resume goes on
    python vqvae.py --device cuda --amp --output-folder wide --hidden-size 128
    python vqvae.py --num-epochs 1 --prior-epochs 0 --output-folder quick --overwrite
    python vqvae.py --output-folder quick --prior-only --prior-epochs 4    # a prior for an existing run
    python vqvae.py --codebook loss --init uniform --restart-threshold 0 --code-dim 0 --beta 1   # reference VQ
    torchrun --standalone --nproc_per_node=2 vqvae.py --batch-size 32 --output-folder ddp    # 2 processes

Writes TensorBoard logs to logs/NAME (`tensorboard --logdir logs`) and checkpoints to models/NAME:
last.pt after every epoch (and when stopped by Ctrl-C or SIGTERM) and best.pt whenever the validation
reconstruction loss improves. The prior then trains on the codes of best.pt's autoencoder and is stored in best.pt.
The validation set is the last --val-size images of the MNIST training set; the test set is left for evaluate.py.
"""
import argparse
import contextlib
import math
import os
import signal
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid
from tqdm import tqdm

from modules import (DECODER_OUTPUTS, GUIDANCE, SAMPLING_TEMPERATURE, VQVAE, CodePrior, PriorConfig, VQVAEConfig,
                     images_to_inputs)
from utils import (ArgumentParser, RunStopped, UserError, epoch_batches, keep_freed_memory, load_checkpoint,
                   load_mnist, load_model, make_checkpoint, make_optimizer, native_bf16, nonnegative_float,
                   nonnegative_int, plain_name, positive_float, positive_int, resolve_device, run_cli, save_checkpoint,
                   score_reconstructions, shard_size, split_train_validation, training_step, unit_interval)
from vector_quantizer import CODEBOOK_INITS, CODEBOOK_UPDATES, distributed

NUM_FIXED_IMAGES = 32  # validation digits whose reconstructions TensorBoard shows after every epoch
DEFAULT_PRIOR_EPOCHS = 8
PRIOR_WARMUP_STEPS = 200


def build_parser() -> ArgumentParser:
    defaults = VQVAEConfig()
    parser = ArgumentParser(description="Train a VQ-VAE on MNIST.")
    parser.add_argument("--output-folder", type=plain_name, default="vqvae",
                        help="run name: logs go to logs/NAME, checkpoints to models/NAME (default: vqvae)")
    parser.add_argument("--data-folder", default="data",
                        help="folder holding MNIST/raw/*-ubyte.gz, or the .gz files themselves (default: data)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="device to train on (default: cpu)")
    model = parser.add_argument_group("model (stored in the checkpoint)")
    model.add_argument("--hidden-size", type=positive_int, default=defaults.hidden_size,
                       help=f"channels of the encoder and decoder (default: {defaults.hidden_size})")
    model.add_argument("--num-residual-blocks", type=nonnegative_int, default=defaults.num_residual_blocks,
                       help=f"residual blocks in the encoder and in the decoder (default: "
                            f"{defaults.num_residual_blocks})")
    model.add_argument("--k", type=positive_int, default=defaults.num_embeddings,
                       help=f"number of codes K in the codebook (default: {defaults.num_embeddings})")
    model.add_argument("--code-dim", type=nonnegative_int, default=defaults.code_dim,
                       help="dimension D of the codes; if it differs from --hidden-size, 1x1 convolutions project "
                            f"into and out of code space; 0 means D = --hidden-size (default: {defaults.code_dim})")
    model.add_argument("--codebook", choices=CODEBOOK_UPDATES, default=defaults.codebook_update,
                       help="how the codes learn: ema (moving averages of their assigned vectors) or loss (codebook "
                            f"loss and Adam, as the reference) (default: {defaults.codebook_update})")
    model.add_argument("--decay", type=unit_interval, default=defaults.ema_decay,
                       help=f"decay of the EMA codebook and of the per-code use counts (default: {defaults.ema_decay})")
    model.add_argument("--init", choices=CODEBOOK_INITS, default=defaults.codebook_init,
                       help="codebook initialisation: kmeans++ or random picks from the first batch's encoder "
                            f"outputs, or the reference's tiny uniform values (default: {defaults.codebook_init})")
    model.add_argument("--restart-threshold", type=nonnegative_float, default=defaults.restart_threshold,
                       help="a code whose moving-average use per batch falls below this moves onto a random encoder "
                            f"output of the batch; 0 never restarts (default: {defaults.restart_threshold})")
    model.add_argument("--cosine", action=argparse.BooleanOptionalAction, default=defaults.cosine,
                       help=f"L2-normalise encoder outputs and codes (default: {defaults.cosine})")
    model.add_argument("--beta", type=nonnegative_float, default=defaults.beta,
                       help=f"weight of the commitment loss (default: {defaults.beta})")
    model.add_argument("--decoder-output", choices=DECODER_OUTPUTS, default=defaults.decoder_output,
                       help="last layer and loss: tanh or linear output with MSE, or logits with binary "
                            f"cross-entropy (default: {defaults.decoder_output})")
    prior_defaults = PriorConfig()
    prior = parser.add_argument_group("prior over the codes (trained after the autoencoder, stored in best.pt)")
    prior.add_argument("--prior-epochs", type=nonnegative_int, default=DEFAULT_PRIOR_EPOCHS,
                       help="epochs of the prior on the codes of the best autoencoder; 0 skips it "
                            f"(default: {DEFAULT_PRIOR_EPOCHS})")
    prior.add_argument("--prior-only", action="store_true",
                       help="train (or retrain) only the prior of the existing models/NAME/best.pt, replacing its "
                            "prior if it has one")
    prior.add_argument("--prior-width", type=positive_int, default=prior_defaults.width,
                       help=f"width of the prior's transformer (default: {prior_defaults.width})")
    prior.add_argument("--prior-layers", type=positive_int, default=prior_defaults.num_layers,
                       help=f"layers of the prior's transformer (default: {prior_defaults.num_layers})")
    prior.add_argument("--prior-heads", type=positive_int, default=prior_defaults.num_heads,
                       help=f"attention heads; must divide --prior-width (default: {prior_defaults.num_heads})")
    prior.add_argument("--prior-dropout", type=unit_interval, default=prior_defaults.dropout,
                       help=f"dropout in the prior (default: {prior_defaults.dropout})")
    prior.add_argument("--prior-batch-size", type=positive_int, default=128,
                       help="code grids per batch of the prior (default: 128)")
    prior.add_argument("--prior-lr", type=positive_float, default=2e-3,
                       help="peak AdamW learning rate of the prior, after a warm-up, decayed to 0 along a cosine "
                            "(default: 2e-3)")
    prior.add_argument("--class-dropout", type=unit_interval, default=0.1,
                       help="fraction of training grids shown to the prior without their class, so that it also "
                            "samples unconditionally (default: 0.1)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per batch (default: 64)")
    parser.add_argument("--num-epochs", type=positive_int, default=10, help="epochs to train (default: 10)")
    parser.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    parser.add_argument("--lr-schedule", choices=["cosine", "constant"], default="cosine",
                        help="cosine: decay the learning rate to 0 over the run's steps (default: cosine)")
    parser.add_argument("--num-workers", type=nonnegative_int, default=0,
                        help="DataLoader worker processes; the data is already in memory (default: 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch order (default: 0)")
    parser.add_argument("--val-size", type=positive_int, default=5000,
                        help="last training images held out for validation (default: 5000)")
    parser.add_argument("--log-interval", type=positive_int, default=20,
                        help="steps between TensorBoard points and progress-bar updates (default: 20)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the checkpoints of an earlier run with the same --output-folder")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="bf16 autocast for the encoder and decoder; quantizer distances and the prior stay "
                             "fp32 (default: on where the device computes bf16 in hardware: CUDA GPUs from Ampere "
                             "on, CPUs with AVX512-BF16 or AMX; off elsewhere)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model; checkpoints hold the plain module's weights (default: off)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="keep activations in channels-last memory format, faster for these convolutions on the "
                             "CPU (benchmarks/speed.py --ablation) (default: on)")
    parser.add_argument("--time-limit", type=nonnegative_float, default=0, metavar="SECONDS",
                        help="stop as Ctrl-C does (last.pt saved, --resume goes on) once this many seconds have "
                             "passed since the start; 0: no limit (default: 0)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in models/NAME/last.pt where it stopped, with its own flags")
    return parser


def config_from_args(args) -> VQVAEConfig:
    return VQVAEConfig(
        hidden_size=args.hidden_size, num_embeddings=args.k, code_dim=args.code_dim or args.hidden_size,
        num_residual_blocks=args.num_residual_blocks, beta=args.beta, codebook_update=args.codebook,
        ema_decay=args.decay, codebook_init=args.init, restart_threshold=args.restart_threshold, cosine=args.cosine,
        decoder_output=args.decoder_output)


def prepare_run_folders(name: str, overwrite: bool, resume: bool, create: bool = True) -> tuple[Path, Path]:
    """Make logs/NAME and models/NAME, refusing to replace an earlier run's checkpoints unless asked. Under
    torchrun every process checks, and only process 0 creates and cleans (create=True)."""
    log_dir, model_dir = Path("logs") / name, Path("models") / name
    existing = [path for path in (model_dir / "best.pt", model_dir / "last.pt") if path.exists()]
    if existing and not (overwrite or resume):
        raise UserError(f"{existing[0]} already exists: pass --resume to continue that run, --overwrite to "
                        "replace it, or choose another --output-folder")
    if not create:
        return log_dir, model_dir
    try:
        for folder in (log_dir, model_dir):
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / ".write-test"
            probe.touch()
            probe.unlink()
        # Half-written files of a run killed mid-save (the checkpoints themselves are always whole).
        for stale in model_dir.glob(".*.pt.tmp-*"):
            stale.unlink()
        if overwrite:
            # The replaced run's curves would otherwise be drawn over the new run's in TensorBoard.
            for events in log_dir.glob("events.out.tfevents.*"):
                events.unlink()
    except OSError as error:
        raise UserError(f"cannot write to {error.filename or folder}: {error.strerror}; choose a writable place") \
            from None
    return log_dir, model_dir


def restore_training_state(checkpoint: dict, model: VQVAE, optimizer, schedule, shuffle_generator,
                           device: torch.device) -> tuple:
    """Load a checkpoint's whole training state; returns (epoch, step, batches_done, best_recon_loss, best_epoch)."""
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    state = checkpoint["training"]
    schedule.load_state_dict(state["schedule"])
    shuffle_generator.set_state(state["shuffle_rng"])
    torch.set_rng_state(state["torch_rng"])
    if device.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    return (checkpoint["epoch"], checkpoint["step"], state["batches_done"], state["best_recon_loss"],
            state["best_epoch"])


def log_training(writer: SummaryWriter, progress: tqdm, means: torch.Tensor, lr: float, step: int) -> None:
    """Mean losses since the last point (one read from the device) to TensorBoard and the progress bar."""
    total, recon, codebook, commitment, perplexity = means.tolist()
    writer.add_scalar("train/loss", total, step)
    writer.add_scalar("train/loss_reconstruction", recon, step)
    writer.add_scalar("train/loss_codebook", codebook, step)
    writer.add_scalar("train/loss_commitment", commitment, step)
    writer.add_scalar("train/perplexity", perplexity, step)
    writer.add_scalar("train/lr", lr, step)
    progress.set_postfix(loss=f"{total:.4f}", recon=f"{recon:.4f}", perplexity=f"{perplexity:.0f}")


def log_validation(writer: SummaryWriter, model: VQVAE, scores, fixed_images: torch.Tensor, step: int) -> None:
    """Validation scores at the training step they were reached, on the same axis as the training curves."""
    writer.add_scalar("val/loss_reconstruction", scores.recon_loss, step)
    writer.add_scalar("val/loss_codebook", scores.codebook_loss, step)
    writer.add_scalar("val/loss_commitment", scores.commitment_loss, step)
    writer.add_scalar("val/mse_pixels", scores.mse, step)
    writer.add_scalar("val/codebook_usage", scores.codebook_usage, step)
    writer.add_scalar("val/perplexity", scores.perplexity, step)
    codes = torch.repeat_interleave(torch.arange(len(scores.counts)), scores.counts)
    writer.add_histogram("val/code_usage", codes, step, bins=len(scores.counts))

    model.eval()
    with torch.no_grad():
        x_recon = model(images_to_inputs(fixed_images)).x_recon
    model.train()
    originals = fixed_images.unsqueeze(1).float() / 255
    # Top half: validation digits; bottom half: their reconstructions. One tag, so the slider steps through them.
    grid = make_grid(torch.cat([originals, model.to_pixels(x_recon)]), nrow=NUM_FIXED_IMAGES // 2)
    writer.add_image("val/reconstructions", grid, step)


# Flags that change what is trained: a resumed run takes them from its checkpoint.
RESULT_FLAGS = ("hidden_size", "num_residual_blocks", "k", "code_dim", "codebook", "decay", "init",
                "restart_threshold", "cosine", "beta", "decoder_output", "batch_size", "num_epochs", "lr",
                "lr_schedule", "seed", "val_size", "prior_epochs", "prior_width", "prior_layers", "prior_heads",
                "prior_dropout", "prior_batch_size", "prior_lr", "class_dropout")


def resume_args(args, checkpoint: dict, path: Path):
    """The run's own flags from its checkpoint; a flag given now that contradicts them is an error."""
    saved = checkpoint.get("args")
    if not isinstance(saved, dict) or "training" not in checkpoint:
        raise UserError(f"{path} holds no training state to resume from; start a new run with --overwrite")
    defaults = build_parser()
    for name in RESULT_FLAGS:
        given = getattr(args, name)
        if given != defaults.get_default(name) and given != saved.get(name, defaults.get_default(name)):
            flag = "--" + name.replace("_", "-")
            raise UserError(f"--resume continues {path} with its own {flag} {saved.get(name)}: drop {flag} "
                            f"{given}, or start a new run")
    # A checkpoint from before the prior existed lacks the prior's flags: they take their defaults.
    return argparse.Namespace(**{**vars(args), **{name: saved.get(name, defaults.get_default(name))
                                                  for name in RESULT_FLAGS}})


class StopOnSignal:
    """While active, Ctrl-C and SIGTERM only note the stop: the loop finishes its step, saves and stops. So does
    passing the deadline of --time-limit (time.monotonic()). A second Ctrl-C stops at once."""

    def __init__(self, deadline: float = math.inf):
        self.deadline = deadline
        self.received = None  # the signal, if one came
        self.timed_out = False

    def __enter__(self):
        self.previous = {sig: signal.signal(sig, self.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum)

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def requested(self) -> bool:
        """Whether this process was asked to stop."""
        self.timed_out = self.timed_out or time.monotonic() >= self.deadline
        return self.received is not None or self.timed_out

    def agreed(self) -> bool:
        """Whether to stop now: this process or (under torchrun) any process was asked to. A collective call there,
        so every process must make it at the same step; all of them then stop together."""
        if not distributed():
            return self.requested()
        flags = torch.tensor([0 if self.received is None else self.received.value, 0])
        flags[1] = self.requested()
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        if flags[0] and self.received is None:
            self.received = signal.Signals(int(flags[0]))
        self.timed_out = bool(flags[1])
        return bool(flags.any())

    def cause(self) -> tuple[str, int]:
        """What stopped the run, and the exit status: 128 + the signal's number, or 0 for the time limit, which
        is an expected end."""
        if self.received is not None:
            return f"stopped by {self.received.name}", 128 + self.received.value
        return "stopped at the --time-limit", 0

    def stopped(self, where: str, model_dir: Path, name: str) -> RunStopped:
        """The one-line report of a stop after last.pt was saved."""
        cause, exit_code = self.cause()
        return RunStopped(f"{cause} {where}; saved {model_dir / 'last.pt'}; continue with: python vqvae.py "
                          f"--output-folder {name} --resume", exit_code)


@torch.no_grad()
def encode_images(model: VQVAE, images: torch.Tensor, device: torch.device, batch_size: int = 1000) -> torch.Tensor:
    """uint8 images (N, 28, 28) -> their code grids (N, 7, 7), on the device."""
    model.eval()
    return torch.cat([model.encode(images_to_inputs(batch.to(device))) for batch in images.split(batch_size)])


@torch.no_grad()
def prior_nll_bits(prior: CodePrior, codes: torch.Tensor, classes: torch.Tensor, batch_size: int = 1000) -> float:
    """Mean negative log-likelihood of code grids (N, 7, 7) given classes (N,), in bits per code."""
    prior.eval()
    total = torch.zeros((), dtype=torch.float64, device=codes.device)
    for batch_codes, batch_classes in zip(codes.split(batch_size), classes.split(batch_size)):
        total += prior.loss(batch_codes, batch_classes).double() * len(batch_codes)
    prior.train()
    return total.item() / len(codes) / math.log(2)


def train_prior(args, model_dir: Path, writer: SummaryWriter, stop: StopOnSignal, device: torch.device,
                data: tuple) -> None:
    """Fit the prior over the code grids of the autoencoder in best.pt and store it in best.pt, at the epoch of
    its best validation NLL."""
    prior_started = time.perf_counter()
    path = model_dir / "best.pt"
    # The checkpoint stays on the CPU: it is written back with the prior in it.
    model, checkpoint = load_model(path, "cpu")
    model.to(device)
    train_images, train_labels, val_images, val_labels = data
    # The codes are computed once: the autoencoder is frozen from here on.
    train_codes, val_codes = encode_images(model, train_images, device), encode_images(model, val_images, device)
    train_labels, val_labels = train_labels.to(device), val_labels.to(device)

    config = PriorConfig(num_embeddings=model.config.num_embeddings, grid_size=train_codes.shape[-1],
                         width=args.prior_width, num_layers=args.prior_layers, num_heads=args.prior_heads,
                         dropout=args.prior_dropout)
    prior = CodePrior(config).to(device)
    prior.class_frequencies.copy_(torch.bincount(train_labels, minlength=config.num_classes) / len(train_labels))
    optimizer = torch.optim.AdamW(prior.parameters(), lr=args.prior_lr, betas=(0.9, 0.98), weight_decay=0.01,
                                  fused=True)
    steps_per_epoch = math.ceil(len(train_codes) / args.prior_batch_size)
    total_steps = args.prior_epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / PRIOR_WARMUP_STEPS)
                                                 * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))
    shuffle_generator = torch.Generator().manual_seed(args.seed)
    sample_classes = torch.arange(10, device=device).repeat_interleave(10)
    num_parameters = sum(parameter.numel() for parameter in prior.parameters())
    print(f"prior: {num_parameters:,} parameters, on the codes of {path} (epoch {checkpoint['epoch']}): "
          f"{len(train_codes):,} train / {len(val_codes):,} validation grids")

    best_nll, step = float("inf"), 0
    for epoch in range(1, args.prior_epochs + 1):
        started = time.perf_counter()
        prior.train()
        running = torch.zeros((), device=device)
        running_steps = 0
        order = torch.randperm(len(train_codes), generator=shuffle_generator).to(device)
        progress = tqdm(order.split(args.prior_batch_size), desc=f"prior epoch {epoch}/{args.prior_epochs}",
                        unit="batch", leave=False, dynamic_ncols=True)
        for indices in progress:
            classes = train_labels[indices]
            dropped = torch.rand(len(classes), device=device) < args.class_dropout
            classes = torch.where(dropped, prior.no_class, classes)
            # fp32 even with --amp: in bf16 autocast the prior both learned worse (validation NLL 5.92 against
            # 5.70 bits per code after 2 epochs) and ran slower (89 to 93 s an epoch against 68 to 86 s) on the CPU.
            loss = prior.loss(train_codes[indices], classes)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(prior.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            running += loss.detach()
            running_steps += 1
            if step % args.log_interval == 0:
                nll_bits = running.item() / running_steps / math.log(2)
                if not math.isfinite(nll_bits):
                    raise UserError(f"the prior's loss became NaN or infinite at step {step}: try a lower "
                                    "--prior-lr")
                writer.add_scalar("prior/train_nll_bits", nll_bits, step)
                progress.set_postfix(nll=f"{nll_bits:.3f} bits")
                running.zero_()
                running_steps = 0
            if stop.requested():
                progress.close()
                writer.close()
                kept = "the prior of its best epoch so far" if best_nll < math.inf else "no prior yet"
                cause, exit_code = stop.cause()
                raise RunStopped(f"{cause} in prior epoch {epoch}; {path} holds the autoencoder and {kept}; train "
                                 f"the prior again with: python vqvae.py --output-folder {args.output_folder} "
                                 "--prior-only", exit_code)

        val_nll = prior_nll_bits(prior, val_codes, val_labels)
        unconditional_nll = prior_nll_bits(prior, val_codes, torch.full_like(val_labels, prior.no_class))
        writer.add_scalar("prior/val_nll_bits", val_nll, step)
        writer.add_scalar("prior/val_nll_bits_unconditional", unconditional_nll, step)
        prior.eval()
        samples = model.to_pixels(model.decode(prior.sample(sample_classes, SAMPLING_TEMPERATURE, GUIDANCE)))
        writer.add_image("prior/samples", make_grid(samples, nrow=10), step)
        improved = val_nll < best_nll
        if improved:
            best_nll = val_nll
            checkpoint["prior"] = {"config": asdict(config), "model": prior.state_dict(), "epoch": epoch,
                                   "val_nll_bits": val_nll, "val_nll_bits_unconditional": unconditional_nll}
            save_checkpoint(path, checkpoint)
        seconds = time.perf_counter() - started
        writer.add_scalar("time/prior_epoch_seconds", seconds, step)
        writer.flush()
        tqdm.write(f"prior epoch {epoch:>2}/{args.prior_epochs}  val NLL {val_nll:.3f} bits/code with the class, "
                   f"{unconditional_nll:.3f} without  {seconds:.1f} s" + ("  [best]" if improved else ""))
    print(f"prior ({time.perf_counter() - prior_started:.0f} s, codes included) saved in {path}; next: python "
          f"generate.py --model {path} --input random --filename samples")


def check_finite(first_bad_step: torch.Tensor, model_dir: Path) -> None:
    bad_step = int(first_bad_step)
    if bad_step >= 0:
        raise UserError(f"the loss became NaN or infinite at step {bad_step}: stopped without saving it; "
                        f"{model_dir / 'last.pt'} holds the last good state (try a lower --lr)")


def prior_only(args, device: torch.device, deadline: float) -> None:
    """--prior-only: fit a prior for the autoencoder an earlier run left in models/NAME/best.pt."""
    if args.resume or args.overwrite:
        raise UserError("--prior-only trains only the prior of an existing run: drop --resume and --overwrite")
    if args.prior_epochs == 0:
        raise UserError("--prior-only with --prior-epochs 0 has nothing to do: give --prior-epochs N")
    model_dir, log_dir = Path("models") / args.output_folder, Path("logs") / args.output_folder
    path = model_dir / "best.pt"
    if not path.is_file():
        raise UserError(f"--prior-only: there is no {path}; train the autoencoder first with python vqvae.py "
                        f"--output-folder {args.output_folder}")
    saved = load_checkpoint(path, "cpu").get("args") or {}
    # The autoencoder's own validation split, so that the prior is validated on grids it did not train on.
    val_size = saved.get("val_size", args.val_size)
    images, labels = load_mnist(args.data_folder, train=True)
    train_images, val_images = split_train_validation(images, val_size)
    train_labels, val_labels = split_train_validation(labels, val_size)
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot write to {log_dir}: {error.strerror}; choose a writable place") from None
    writer = SummaryWriter(log_dir)
    with StopOnSignal(deadline) as stop:
        train_prior(args, model_dir, writer, stop, device, (train_images, train_labels, val_images, val_labels))
    writer.close()


class NoWriter:
    """Stands in for the SummaryWriter on the processes other than 0 under torchrun: they log nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def process_group(device_name: str):
    """Yield (rank, world_size, device). Under torchrun (WORLD_SIZE > 1) join the process group first: gloo on
    CPU, nccl on CUDA with one GPU per process (LOCAL_RANK); a plain `python vqvae.py` is rank 0 of 1."""
    device = resolve_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        yield 0, 1, device
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield dist.get_rank(), world_size, device
    finally:
        dist.destroy_process_group()


def main(args):
    """Train as the command line says; returns the trained autoencoder (None when there was nothing to train)."""
    # Checked before the autoencoder trains, not after it.
    if args.prior_width % args.prior_heads:
        raise UserError(f"--prior-heads {args.prior_heads} must divide --prior-width {args.prior_width}")
    deadline = time.monotonic() + args.time_limit if args.time_limit else math.inf
    keep_freed_memory()
    with process_group(args.device) as (rank, world_size, device):
        if args.amp is None:
            args.amp = native_bf16(device)  # +32% to +44% on a CPU with AVX512-BF16 (speed.py --ablation)
        if args.prior_only:
            if world_size > 1:
                raise UserError("--prior-only runs in one process: start it with python vqvae.py, not torchrun")
            prior_only(args, device, deadline)
            return None
        return train(args, rank, world_size, device, deadline)


def train(args, rank: int, world_size: int, device: torch.device, deadline: float = math.inf):
    main_process = rank == 0  # the one that prints, logs and saves
    model_dir = Path("models") / args.output_folder
    resumed = None
    if args.resume:
        if args.overwrite:
            raise UserError("--resume continues a run and --overwrite replaces it: pass only one")
        path = model_dir / "last.pt"
        if not path.is_file():
            raise UserError(f"--resume: there is no {path} to continue; start the run without --resume")
        resumed = load_checkpoint(path, "cpu")
        args = resume_args(args, resumed, path)
    torch.manual_seed(args.seed)
    images, labels = load_mnist(args.data_folder, train=True)
    train_images, val_images = split_train_validation(images, args.val_size)
    train_labels, val_labels = split_train_validation(labels, args.val_size)
    prior_data = (train_images, train_labels, val_images, val_labels)
    log_dir, model_dir = prepare_run_folders(args.output_folder, args.overwrite, args.resume, create=main_process)
    fixed_images = val_images[:NUM_FIXED_IMAGES].to(device)
    # The training set lives in memory as one uint8 tensor, on the training device unless workers read it.
    train_images = train_images.to(device if args.num_workers == 0 else "cpu")
    shuffle_generator = torch.Generator().manual_seed(args.seed)
    steps_per_epoch = math.ceil(shard_size(len(train_images), world_size) / args.batch_size)

    config = config_from_args(args)
    model = VQVAE(config).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)  # before DDP, which must see the final parameters
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed 28x28 shapes: let cuDNN pick its fastest kernels once
    # DDP averages the gradients over the processes; the quantizer keeps its codebook in step itself.
    forward = model
    if world_size > 1:
        forward = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    # The compiled module shares the plain one's parameters and buffers; checkpoints save the plain one.
    forward = torch.compile(forward) if args.compile else forward
    optimizer = make_optimizer(model, args.lr)
    total_steps = args.num_epochs * steps_per_epoch
    schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
                if args.lr_schedule == "cosine" else torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0))

    # Where the run stands: `epoch` epochs done, then `batches_done` batches of the next, whose batch order comes
    # from the shuffle generator's state `epoch_shuffle_state`.
    epoch, step, batches_done = 0, 0, 0
    best_recon_loss, best_epoch = float("inf"), 0
    if resumed is not None:
        epoch, step, batches_done, best_recon_loss, best_epoch = restore_training_state(
            resumed, model, optimizer, schedule, shuffle_generator, device)
        if epoch >= args.num_epochs:
            if not main_process:
                return None
            if args.prior_epochs and "prior" not in load_checkpoint(model_dir / "best.pt", "cpu"):
                print(f"{model_dir / 'last.pt'} already finished its {args.num_epochs} epochs; training its prior")
                with SummaryWriter(log_dir) as writer, StopOnSignal(deadline) as stop:
                    train_prior(args, model_dir, writer, stop, device, prior_data)
            else:
                print(f"{model_dir / 'last.pt'} already finished its {args.num_epochs} epochs; nothing to do")
            return None
        if main_process:
            print(f"resuming {model_dir / 'last.pt'} at epoch {epoch + 1}, batch {batches_done + 1} (step {step})")
    num_parameters = sum(parameter.numel() for parameter in model.parameters())
    if main_process:
        processes = f" x {world_size} processes" if world_size > 1 else ""
        precision = " in bf16 autocast" if args.amp else ""
        print(f"training on {device}{processes}{precision}: {len(train_images):,} train / {len(val_images):,} "
              f"validation images, K={config.num_embeddings}, D={config.code_dim}, {num_parameters:,} parameters; "
              f"logs in {log_dir}, checkpoints in {model_dir}")

    def checkpoint(val=None) -> dict:
        training = {
            "schedule": schedule.state_dict(),
            "batches_done": batches_done,
            "shuffle_rng": epoch_shuffle_state,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "best_recon_loss": best_recon_loss,
            "best_epoch": best_epoch,
        }
        return make_checkpoint(model, optimizer, epoch, step, val=val, args=vars(args), training=training)

    run_started = time.perf_counter()
    # purge_step drops events an interrupted run wrote after its last checkpoint, so the curves do not jump.
    writer = (SummaryWriter(log_dir, purge_step=step + 1 if resumed is not None else None) if main_process
              else NoWriter())
    first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
    with StopOnSignal(deadline) as stop:
        while epoch < args.num_epochs:
            model.train()
            started = time.perf_counter()
            epoch_shuffle_state = shuffle_generator.get_state()
            # Running sums stay on the device and are read every --log-interval steps, not every step.
            running = torch.zeros(5, device=device)  # total, reconstruction, codebook, commitment, perplexity
            running_steps = 0
            batches = epoch_batches(train_images, args.batch_size, shuffle_generator, args.num_workers,
                                    skip=batches_done, shard=rank, num_shards=world_size)
            progress = tqdm(batches, initial=batches_done, total=steps_per_epoch,
                            desc=f"epoch {epoch + 1}/{args.num_epochs}", unit="batch", leave=False,
                            dynamic_ncols=True, disable=not main_process)
            for batch in progress:
                losses = training_step(model, optimizer, batch.to(device, non_blocking=True), amp=args.amp,
                                       forward=forward)
                schedule.step()

                step += 1
                batches_done += 1
                # Recorded on the device, read with the logs: finding the first bad step needs no sync per step.
                first_bad_step = torch.where((first_bad_step < 0) & ~torch.isfinite(losses[0]), step, first_bad_step)
                running += losses
                running_steps += 1
                # Under torchrun the processes agree on stopping at the logging steps only: a collective per step
                # would cost a sync per step.
                stopping = (step % args.log_interval == 0 or world_size == 1) and stop.agreed()
                if step % args.log_interval == 0 or stopping:
                    check_finite(first_bad_step, model_dir)
                    if main_process:
                        log_training(writer, progress, running / running_steps, schedule.get_last_lr()[0], step)
                    running.zero_()
                    running_steps = 0
                if stopping:
                    progress.close()
                    if main_process:
                        save_checkpoint(model_dir / "last.pt", checkpoint())
                    writer.close()
                    raise stop.stopped(f"at step {step} (epoch {epoch + 1}, batch {batches_done} of "
                                       f"{steps_per_epoch})", model_dir, args.output_folder)

            check_finite(first_bad_step, model_dir)
            epoch, batches_done = epoch + 1, 0
            epoch_shuffle_state = shuffle_generator.get_state()
            scores = score_reconstructions(model, val_images, batch_size=1000, device=device)
            if main_process:
                log_validation(writer, model, scores, fixed_images, step)
            improved = scores.recon_loss < best_recon_loss
            if improved:
                best_recon_loss, best_epoch = scores.recon_loss, epoch
            val = {"recon_loss": scores.recon_loss, "mse": scores.mse, "codebook_usage": scores.codebook_usage,
                   "perplexity": scores.perplexity}
            if main_process:
                state = checkpoint(val)
                save_checkpoint(model_dir / "last.pt", state)
                if improved:
                    save_checkpoint(model_dir / "best.pt", state)
                seconds = time.perf_counter() - started
                writer.add_scalar("time/epoch_seconds", seconds, step)
                writer.flush()
                tqdm.write(f"epoch {epoch:>2}/{args.num_epochs}  val recon loss {scores.recon_loss:.5f}  "
                           f"MSE {scores.mse:.5f} ({scores.psnr:.1f} dB)  codes used {scores.codes_used}/"
                           f"{config.num_embeddings} ({scores.codebook_usage:.1%})  perplexity "
                           f"{scores.perplexity:.1f}  {seconds:.1f} s" + ("  [best]" if improved else ""))
            if stop.agreed():
                writer.close()
                raise stop.stopped(f"after epoch {epoch}", model_dir, args.output_folder)
        if world_size > 1:
            dist.barrier()  # the others leave only once process 0 has written the last checkpoint
        if main_process:
            print(f"autoencoder trained in {time.perf_counter() - run_started:.0f} s; best: "
                  f"{model_dir / 'best.pt'} (epoch {best_epoch}); "
                  f"python generate.py --model {model_dir / 'best.pt'} --input MNIST --filename recon")
            if args.prior_epochs:
                # The prior is small and trains in the one process; under torchrun the others are done.
                train_prior(args, model_dir, writer, stop, device, prior_data)
    writer.close()
    return model


if __name__ == "__main__":
    run_cli(main, build_parser().parse_args())
