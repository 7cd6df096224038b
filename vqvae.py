"""Train a VQ-VAE on MNIST, then the prior over its codes.

Usage:
    python vqvae.py                                      # defaults: CPU, 8 epochs, then 5 of the prior, run "vqvae"
    python vqvae.py --resume                             # after Ctrl-C or SIGTERM: go on where it stopped
    python vqvae.py --time-limit 3600                    # stop and save after an hour; --resume goes on
    python vqvae.py --device cuda --amp --output-folder wide --hidden-size 128
    python vqvae.py --num-epochs 1 --prior-epochs 0 --output-folder quick --overwrite
    python vqvae.py --output-folder quick --prior-only --prior-epochs 4    # a prior for an existing run
    python vqvae.py --codebook loss --init uniform --restart-threshold 0 --code-dim 0 --beta 1   # reference VQ
    python vqvae.py --bottleneck fsq --fsq-levels 8,8,8 --output-folder fsq  # finite scalar quantisation, K = 512
    python vqvae.py --bottleneck gaussian --kl-weight 0.1 --output-folder vae  # a continuous VAE, no prior
    python vqvae.py --gradient rotation --output-folder rotation    # the VQ with the rotation trick
    python vqvae.py --bottleneck simvq --output-folder simvq        # SimVQ: a learned map of a frozen codebook
    python vqvae.py --bottleneck lfq --lfq-bits 9 --output-folder lfq   # lookup-free quantisation, K = 512
    python vqvae.py --bottleneck rvq --depth 2 --output-folder rvq  # residual VQ: 2 levels of 512 codes
    torchrun --standalone --nproc_per_node=2 vqvae.py --batch-size 32 --output-folder ddp    # 2 processes

Writes TensorBoard logs to logs/NAME (`tensorboard --logdir logs`) and checkpoints to models/NAME:
last.pt after every epoch (and when stopped by Ctrl-C or SIGTERM) and best.pt whenever the validation
reconstruction loss improves. The prior then trains on the codes of best.pt's autoencoder and is stored in best.pt;
its own training state goes to prior_last.pt, so a --resume after a stop in the prior goes on where it stopped.
The validation set is the last --val-size images of the MNIST training set; the test set is left for evaluate.py.
"""
import argparse
import math
import shlex
import time
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch.utils.tensorboard import SummaryWriter

from modules import BOTTLENECKS
from options import from_flags
from vqmnist.checkpoints.format import RunState, load_checkpoint
from vqmnist.configuration.cli import run_cli
from vqmnist.configuration.errors import UserError, running_out_is_a_user_error
from vqmnist.configuration.training_flags import (build_parser, check_request, check_resumed, check_resumed_flags,
                                                  load_prior_state, model_config, prior_config, resume_args,
                                                  resume_command, size_flags,
                                                  with_the_runs_data_folder)
from vqmnist.io.data import Splits, load_splits, shard_size, steps_per_epoch
from vqmnist.running.autoencoder_task import AutoencoderTask, TrainingSettings
from vqmnist.running.loop import LoopSettings, train_epochs
from vqmnist.running.machine import ThreadChooser, keep_freed_memory, native_bf16
from vqmnist.running.prior_task import PriorSettings, PriorTask, resumable
from vqmnist.running.processes import Processes, process_group
from vqmnist.running.run_folder import hold_run_folder, make_folder, prepare_run_folders, run_folders
from vqmnist.running.run_log import NoWriter, RunFigures
from vqmnist.running.stopping import StopOnSignal


def missing_best(model_dir: Path) -> UserError:
    """The line for a run whose autoencoder finished but whose best.pt, which its prior is for, is gone."""
    best, last = model_dir / "best.pt", model_dir / "last.pt"
    return UserError(f"{best} is missing, so the prior has no autoencoder to model: copy {last} (the last epoch's "
                     f"autoencoder) to {best} and --resume again, or start a new run with --overwrite")


def training_splits(args, world_size: int) -> Splits:
    """The splits of --dataset and --val-size, refused where a batch would be larger than a process's training
    images."""
    splits = load_splits(args.data_folder, args.val_size, args.dataset)
    if args.batch_size > shard_size(len(splits.train_images), world_size):
        raise UserError(f"--batch-size {args.batch_size} is more than the {len(splits.train_images):,} training "
                        f"images{' of each process' if world_size > 1 else ''}: give a smaller one")
    return splits


def check_start(args, world_size: int) -> Splits | None:
    """Refuse a run that has nothing to start from, before models/NAME is held (which makes it); returns a new
    run's splits, read first so that a data set that cannot be read leaves no folder behind."""
    model_dir = run_folders(args.output_folder).model_dir
    if args.prior_only:
        if world_size > 1:
            raise UserError("--prior-only runs in one process: start it with python vqvae.py, not torchrun")
        if not (model_dir / "best.pt").is_file():
            raise UserError(f"there is no {model_dir / 'best.pt'} to train a prior for; train the autoencoder first "
                            f"with python vqvae.py --output-folder {shlex.quote(args.output_folder)}")
        return None
    if args.resume:
        # A folder whose prior alone trained here (--prior-only) has a prior_last.pt but no last.pt.
        if not ((model_dir / "last.pt").is_file() or (model_dir / "prior_last.pt").is_file() and world_size == 1):
            raise UserError(f"--resume: there is no {model_dir / 'last.pt'} to continue; start the run without "
                            "--resume")
        return None
    return training_splits(args, world_size)


class RunPlan(NamedTuple):
    """What a run does, decided once from its flags and the files of models/NAME before anything trains."""

    args: argparse.Namespace  # the flags it trains with: a --resume's are its checkpoint's
    splits: Splits | None = None  # the autoencoder's; None where the prior reads best.pt's own
    autoencoder: bool = False  # the autoencoder trains
    autoencoder_resumed: dict | None = None  # last.pt, where the autoencoder goes on from it
    prior: bool = False  # the prior trains, on process 0, once the autoencoder is done
    prior_resumed: dict | None = None  # prior_last.pt, where the prior goes on from it
    note: str = ""  # what a --resume found, when that is not plain


def plan_run(args, processes: Processes, splits: Splits | None) -> RunPlan:
    """The run's plan: a new run trains its autoencoder, then its prior (where its bottleneck is discrete and
    --prior-epochs is not 0); --prior-only trains the prior of best.pt; a --resume goes on with the autoencoder of
    last.pt, or, where that finished its epochs, with the prior of prior_last.pt, or trains the prior from its start
    where it has none or another autoencoder's. Called with models/NAME held."""
    model_dir = run_folders(args.output_folder).model_dir
    last, best, prior_last = model_dir / "last.pt", model_dir / "best.pt", model_dir / "prior_last.pt"
    if args.prior_only or args.resume and not last.is_file():  # the latter: the prior alone trained here
        if not best.is_file():
            raise missing_best(model_dir)
        best_checkpoint = load_checkpoint(best)
        args = with_the_runs_data_folder(args, best_checkpoint, best)
        if args.prior_only:
            return RunPlan(args, prior=True)
        resumed = load_prior_state(prior_last)
        if resumable(resumed, best_checkpoint):
            return RunPlan(args, prior=True, prior_resumed=resumed)
        return RunPlan(args, note=f"{prior_last} already finished its prior epochs; nothing to do")
    resumed = None
    if args.resume:
        args, resumed = resume_args(args, build_parser())
        check_resumed_flags(args, last)
        splits = training_splits(args, processes.world_size)  # its --val-size is the checkpoint's
        epoch_steps = steps_per_epoch(len(splits.train_images), args.batch_size, processes.world_size)
        check_resumed(resumed, args, epoch_steps)
    wants_prior = bool(args.prior_epochs) and BOTTLENECKS[args.bottleneck].discrete and processes.rank == 0
    if resumed is None or resumed["epoch"] < args.num_epochs:
        return RunPlan(args, splits, autoencoder=True, autoencoder_resumed=resumed, prior=wants_prior)
    finished = f"{last} already finished its {args.num_epochs} epochs"
    if not wants_prior:
        return RunPlan(args, splits, note=f"{finished}; nothing to do" if processes.rank == 0 else "")
    if not best.is_file():
        raise missing_best(model_dir)
    best_checkpoint, prior_resumed = load_checkpoint(best), load_prior_state(prior_last)
    if resumable(prior_resumed, best_checkpoint):
        return RunPlan(args, splits, prior=True, prior_resumed=prior_resumed)
    if "prior" in best_checkpoint and prior_resumed is not None \
            and prior_resumed["autoencoder_step"] == best_checkpoint["step"]:
        return RunPlan(args, splits, note=f"{finished} and its prior its {prior_resumed['settings']['epochs']}; "
                                          "nothing to do")
    why = ("it has no prior yet" if "prior" not in best_checkpoint else
           f"{prior_last}, which says where its prior stood, is missing" if prior_resumed is None else
           f"{prior_last} is the prior of another autoencoder")
    return RunPlan(args, splits, prior=True, note=f"{finished}, but {why}: training its prior from its start")


def announce(task: AutoencoderTask, state: RunState, args) -> None:
    """What is about to train, and where it goes: one line from process 0."""
    if task.processes.rank != 0:
        return
    _, world_size, device = task.processes
    if args.resume:
        print(f"resuming {task.last_path} at epoch {state.epoch + 1}, batch {state.batches_done + 1} "
              f"(step {state.step})")
    bottleneck = task.model.bottleneck
    levels = f" in each of {bottleneck.code_levels} levels" if bottleneck.code_levels > 1 else ""
    codes = f"K={bottleneck.num_embeddings}{levels}, " if bottleneck.discrete else ""
    num_parameters = sum(parameter.numel() for parameter in task.model.parameters())
    processes = f" x {world_size} processes" if world_size > 1 else ""
    precision = " in bf16 autocast" if args.amp else ""
    print(f"training on {device}{processes}{precision}: {len(task.train_images):,} train / "
          f"{len(task.val_images):,} validation images, {codes}D={bottleneck.code_dim}, "
          f"{num_parameters:,} parameters; logs in {run_folders(args.output_folder).log_dir}, checkpoints in "
          f"{task.model_dir}")


def announce_prior(task: PriorTask, state: RunState, resumed: bool) -> None:
    """Where the prior's training starts, and what it trains on."""
    if resumed:
        print(f"resuming the prior in {task.last_path} at prior epoch {state.epoch + 1}, batch "
              f"{state.batches_done + 1} (step {state.step})")
    num_parameters = sum(parameter.numel() for parameter in task.prior.parameters())
    print(f"prior: {num_parameters:,} parameters, on the codes of {task.best_path} (epoch "
          f"{task.best_checkpoint['epoch']}): {len(task.codes.train_codes):,} train / "
          f"{len(task.codes.val_codes):,} validation grids")


def best_line(best: Path, best_epoch: int, last: Path) -> str:
    """Where the run's best autoencoder is, and what to run next; or, where best.pt was deleted during the run, that
    it is gone and what last.pt holds."""
    if best.is_file():
        return (f"best: {best} (epoch {best_epoch}); python generate.py --model {shlex.quote(str(best))} --input "
                "MNIST --filename recon")
    return (f"{best} was deleted during the run, and no later epoch did better: {last} holds the last epoch's "
            f"autoencoder (python generate.py --model {shlex.quote(str(last))} --input MNIST --filename recon)")


def main(args):
    """Train as the command line says: the plan's autoencoder, then its prior. Returns the trained autoencoder (None
    when it did not train)."""
    check_request(args)
    deadline = time.monotonic() + args.time_limit if args.time_limit else math.inf
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    with process_group(args.device) as processes:
        rank, world_size, device = processes
        if args.amp is None:
            args.amp = native_bf16(device)
        splits = check_start(args, world_size)
        log_dir, model_dir = run_folders(args.output_folder)
        # The folder is held before last.pt is read: a run that ends after this read cannot then have its newer
        # last.pt replaced by this one's older state.
        with hold_run_folder(model_dir, hold=rank == 0):
            if world_size > 1:
                dist.barrier()  # the others read last.pt only once process 0 holds the folder
            plan = plan_run(args, processes, splits)
            args = plan.args
            if args.threads:  # a --resume's may be the stopped run's
                torch.set_num_threads(args.threads)
            if plan.note:
                print(plan.note)
            if not (plan.autoencoder or plan.prior):
                return None
            if plan.autoencoder:
                prepare_run_folders(args.output_folder, args.overwrite, args.resume, create=rank == 0)
            else:
                make_folder(log_dir)
            # purge_step drops events an interrupted run wrote after its last checkpoint, so the curves do not jump.
            purge_step = plan.autoencoder_resumed["step"] + 1 if plan.autoencoder_resumed is not None else None
            writer = SummaryWriter(log_dir, purge_step=purge_step) if rank == 0 else NoWriter()
            figures = RunFigures(model_dir, fresh=plan.autoencoder and plan.autoencoder_resumed is None,
                                 enabled=rank == 0)
            model = None
            if plan.autoencoder:
                task, state = AutoencoderTask.build(
                    model_config(args), from_flags(TrainingSettings, args), processes, plan.splits, model_dir,
                    flags=vars(args), resume_command=resume_command(args), writer=writer,
                    resumed=plan.autoencoder_resumed)
                announce(task, state, args)
                figures.start("autoencoder", resumed=plan.autoencoder_resumed is not None)
                with StopOnSignal(deadline) as stop, running_out_is_a_user_error(
                        f"lower --batch-size (now {args.batch_size}), {size_flags(args.bottleneck)} and start again "
                        "with --overwrite", task.last_path, resume_command(args)):
                    loop = LoopSettings(args.num_epochs, args.log_interval, device, rank == 0, world_size)
                    train_epochs(task, state, loop, stop, writer, figures,
                                 ThreadChooser.for_training(device, args.threads))
                if world_size > 1:
                    dist.barrier()  # the others leave only once process 0 has written the last checkpoint
                seconds = figures.finished("autoencoder", best_epoch=state.best_epoch)
                if rank == 0:
                    print(f"autoencoder trained in {seconds:.0f} s; "
                          f"{best_line(model_dir / 'best.pt', state.best_epoch, task.last_path)}")
                model = task.model
            if plan.prior:
                if not (model_dir / "best.pt").is_file():
                    raise missing_best(model_dir)
                figures.start("prior", resumed=plan.prior_resumed is not None)
                with StopOnSignal(deadline) as stop, running_out_is_a_user_error(
                        f"lower --prior-batch-size (now {args.prior_batch_size})", model_dir / "prior_last.pt",
                        "--resume" if (model_dir / "last.pt").is_file() else "--prior-only"):
                    task, state = PriorTask.build(
                        from_flags(PriorSettings, args), prior_config(args), device, model_dir, plan.splits,
                        args.data_folder, args.val_size, resume_command(args), writer,
                        resumed=plan.prior_resumed)
                    if plan.prior_resumed is None:
                        task.last_path.unlink(missing_ok=True)  # an earlier prior's state, which this one replaces
                    announce_prior(task, state, plan.prior_resumed is not None)
                    loop = LoopSettings(task.settings.epochs, task.settings.log_interval, device)
                    train_epochs(task, state, loop, stop, writer, figures,
                                 ThreadChooser.for_training(device, args.threads))
                seconds = figures.finished("prior", best_epoch=state.best_epoch)
                print(f"prior ({seconds:.0f} s, codes included) saved in {task.best_path}; next: python generate.py "
                      f"--model {shlex.quote(str(task.best_path))} --input random --filename samples")
            writer.close()
    return model


if __name__ == "__main__":
    run_cli(main, build_parser().parse_args())
