"""Train a VQ-VAE on MNIST.

Usage:
    python vqvae.py                                      # defaults: CPU, 10 epochs, run name "vqvae"
    python vqvae.py --device cuda --output-folder wide --hidden-size 64
    python vqvae.py --num-epochs 1 --output-folder quick --overwrite

Writes TensorBoard logs to logs/NAME (`tensorboard --logdir logs`) and checkpoints to models/NAME:
last.pt after every epoch and best.pt whenever the validation reconstruction loss improves.
The validation set is the last --val-size images of the MNIST training set; the test set is left for evaluate.py.
"""
import argparse
import math
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.tensorboard import SummaryWriter
from torchvision.utils import make_grid
from tqdm import tqdm

from modules import DECODER_OUTPUTS, VQVAE, VQVAEConfig, images_to_inputs
from utils import (ArgumentParser, UserError, load_mnist, make_checkpoint, nonnegative_float, nonnegative_int,
                   plain_name, positive_float, positive_int, resolve_device, run_cli, save_checkpoint,
                   score_reconstructions, split_train_validation, unit_interval)
from vector_quantizer import CODEBOOK_INITS, CODEBOOK_UPDATES

NUM_FIXED_IMAGES = 32  # validation digits whose reconstructions TensorBoard shows after every epoch


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
    return parser


def config_from_args(args) -> VQVAEConfig:
    return VQVAEConfig(
        hidden_size=args.hidden_size, num_embeddings=args.k, code_dim=args.code_dim or args.hidden_size,
        num_residual_blocks=args.num_residual_blocks, beta=args.beta, codebook_update=args.codebook,
        ema_decay=args.decay, codebook_init=args.init, restart_threshold=args.restart_threshold, cosine=args.cosine,
        decoder_output=args.decoder_output)


def prepare_run_folders(name: str, overwrite: bool) -> tuple[Path, Path]:
    log_dir, model_dir = Path("logs") / name, Path("models") / name
    existing = [path for path in (model_dir / "best.pt", model_dir / "last.pt") if path.exists()]
    if existing and not overwrite:
        raise UserError(f"{existing[0]} already exists: pass --overwrite to replace it, or choose another "
                        "--output-folder")
    try:
        for folder in (log_dir, model_dir):
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / ".write-test"
            probe.touch()
            probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write to {error.filename or folder}: {error.strerror}; choose a writable place") \
            from None
    return log_dir, model_dir


def epoch_batches(images: torch.Tensor, batch_size: int, generator: torch.Generator, num_workers: int):
    """One epoch of shuffled batches of images (N, 28, 28) uint8, cut by index from the tensor in memory.
    With workers, a DataLoader cuts the same batches in worker processes."""
    batches = torch.randperm(len(images), generator=generator).to(images.device).split(batch_size)
    if num_workers == 0:
        return (images[indices] for indices in batches)
    # Its own generator for the workers' seeds, so starting workers leaves the global RNG (restarts use it) alone.
    loader = DataLoader(TensorDataset(images), batch_sampler=[indices.tolist() for indices in batches],
                        num_workers=num_workers, pin_memory=torch.cuda.is_available(),
                        generator=torch.Generator().manual_seed(0))
    return (batch for (batch,) in loader)


def log_validation(writer: SummaryWriter, model: VQVAE, scores, fixed_images: torch.Tensor, epoch: int) -> None:
    writer.add_scalar("val/loss_reconstruction", scores.recon_loss, epoch)
    writer.add_scalar("val/loss_codebook", scores.codebook_loss, epoch)
    writer.add_scalar("val/loss_commitment", scores.commitment_loss, epoch)
    writer.add_scalar("val/mse_pixels", scores.mse, epoch)
    writer.add_scalar("val/codebook_usage", scores.codebook_usage, epoch)
    writer.add_scalar("val/perplexity", scores.perplexity, epoch)
    codes = torch.repeat_interleave(torch.arange(len(scores.counts)), scores.counts)
    writer.add_histogram("val/code_usage", codes, epoch, bins=len(scores.counts))

    model.eval()
    with torch.no_grad():
        x_recon = model(images_to_inputs(fixed_images)).x_recon
    model.train()
    originals = fixed_images.unsqueeze(1).float() / 255
    # Top half: validation digits; bottom half: their reconstructions. One tag, so the slider steps through epochs.
    grid = make_grid(torch.cat([originals, model.to_pixels(x_recon)]), nrow=NUM_FIXED_IMAGES // 2)
    writer.add_image("val/reconstructions", grid, epoch)


def main(args) -> None:
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    images, _ = load_mnist(args.data_folder, train=True)
    train_images, val_images = split_train_validation(images, args.val_size)
    log_dir, model_dir = prepare_run_folders(args.output_folder, args.overwrite)
    fixed_images = val_images[:NUM_FIXED_IMAGES].to(device)
    # The training set lives in memory as one uint8 tensor, on the training device unless workers read it.
    train_images = train_images.to(device if args.num_workers == 0 else "cpu")
    shuffle_generator = torch.Generator().manual_seed(args.seed)
    steps_per_epoch = math.ceil(len(train_images) / args.batch_size)

    config = config_from_args(args)
    model = VQVAE(config).to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    total_steps = args.num_epochs * steps_per_epoch
    schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
                if args.lr_schedule == "cosine" else torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0))
    num_parameters = sum(parameter.numel() for parameter in model.parameters())
    print(f"training on {device}: {len(train_images):,} train / {len(val_images):,} validation images, "
          f"K={config.num_embeddings}, D={config.code_dim}, {num_parameters:,} parameters; "
          f"logs in {log_dir}, checkpoints in {model_dir}")

    writer = SummaryWriter(log_dir)
    step, best_recon_loss, best_epoch = 0, float("inf"), 0
    for epoch in range(1, args.num_epochs + 1):
        model.train()
        started = time.perf_counter()
        # Running sums stay on the device and are read every --log-interval steps, not every step.
        running = torch.zeros(5, device=device)  # total, reconstruction, codebook, commitment, perplexity
        running_steps = 0
        batches = epoch_batches(train_images, args.batch_size, shuffle_generator, args.num_workers)
        progress = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch}/{args.num_epochs}", unit="batch",
                        leave=False, dynamic_ncols=True)
        for batch in progress:
            x = images_to_inputs(batch.to(device, non_blocking=True))
            x_recon, quantized = model(x)
            recon_loss = model.reconstruction_loss(x_recon, x)
            # With the EMA codebook the codebook loss has no gradient: it is reported, and adds a constant.
            loss = recon_loss + quantized.codebook_loss + quantized.commitment_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()

            step += 1
            running += torch.stack([loss, recon_loss, quantized.codebook_loss, quantized.commitment_loss,
                                    quantized.perplexity]).detach()
            running_steps += 1
            if step % args.log_interval == 0:
                total, recon, codebook, commitment, perplexity = (running / running_steps).tolist()
                writer.add_scalar("train/loss", total, step)
                writer.add_scalar("train/loss_reconstruction", recon, step)
                writer.add_scalar("train/loss_codebook", codebook, step)
                writer.add_scalar("train/loss_commitment", commitment, step)
                writer.add_scalar("train/perplexity", perplexity, step)
                writer.add_scalar("train/lr", schedule.get_last_lr()[0], step)
                progress.set_postfix(loss=f"{total:.4f}", recon=f"{recon:.4f}", perplexity=f"{perplexity:.0f}")
                running.zero_()
                running_steps = 0

        scores = score_reconstructions(model, val_images, batch_size=1000, device=device)
        log_validation(writer, model, scores, fixed_images, epoch)
        val = {"recon_loss": scores.recon_loss, "mse": scores.mse, "codebook_usage": scores.codebook_usage,
               "perplexity": scores.perplexity}
        checkpoint = make_checkpoint(model, optimizer, epoch, step, val=val, args=vars(args))
        save_checkpoint(model_dir / "last.pt", checkpoint)
        improved = scores.recon_loss < best_recon_loss
        if improved:
            best_recon_loss, best_epoch = scores.recon_loss, epoch
            save_checkpoint(model_dir / "best.pt", checkpoint)
        seconds = time.perf_counter() - started
        writer.add_scalar("time/epoch_seconds", seconds, epoch)
        writer.flush()
        tqdm.write(f"epoch {epoch:>2}/{args.num_epochs}  val recon loss {scores.recon_loss:.5f}  "
                   f"MSE {scores.mse:.5f} ({scores.psnr:.1f} dB)  "
                   f"codes used {scores.codes_used}/{config.num_embeddings} ({scores.codebook_usage:.1%})  "
                   f"perplexity {scores.perplexity:.1f}  {seconds:.1f} s" + ("  [best]" if improved else ""))
    writer.close()
    print(f"best: {model_dir / 'best.pt'} (epoch {best_epoch}); next: "
          f"python generate.py --model {model_dir / 'best.pt'} --input MNIST --filename recon")


if __name__ == "__main__":
    run_cli(main, build_parser().parse_args())
