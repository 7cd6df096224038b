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
import contextlib
import math
import shlex
import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter

from modules import BOTTLENECKS, VQVAE, VQVAEConfig, load_model, stored_autoencoder
from vqmnist.autoencoder_training import AutoencoderTask, TrainingSettings, make_optimizer, make_schedule
from vqmnist.checkpoints import (TRAINING_KEYS, RunState, load_checkpoint, load_prior_training, restore_training,
                                 trained_dataset)
from vqmnist.checkpoint_checks import DAMAGED, MAX_STEP, check_count, check_optimizer, check_place, check_weights
from vqmnist.cli import (ArgumentParser, Arguments, add_device_flag, add_option_flags, integer, number, plain_name,
                         run_cli, unit_interval)
from vqmnist.data import DATASETS, Splits, load_splits, shard_size
from vqmnist.errors import UserError, running_out_is_a_user_error
from vqmnist.loop import LoopSettings, train_epochs
from vqmnist.limits import (MAX_BATCH, MAX_EPOCHS, MAX_LEARNING_RATE, MAX_SECONDS, MAX_SEED,
                            MAX_STEPS_BETWEEN_LOGS, MAX_THREADS, MAX_VALIDATION, MAX_WORKERS, check_size,
                            check_step_cost)
from vqmnist.machine import keep_freed_memory, native_bf16
from vqmnist.prior import CodePrior, PriorConfig
from vqmnist.prior_training import DEFAULT_PRIOR_BATCH_SIZE, PriorSettings, resumable, train_prior
from vqmnist.processes import Processes, process_group
from vqmnist.run_folder import hold_run_folder, make_folder, prepare_run_folders, run_folders
from vqmnist.run_log import NoWriter, RunFigures
from vqmnist.stopping import StopOnSignal
from vqmnist.stored_flags import as_typed, check_stored_flags
from vqmnist.threads import DEFAULT_THREADS, ThreadChooser

DEFAULT_PRIOR_EPOCHS = PriorSettings.epochs
# Flags that say how to run, not what is trained: a --resume takes them as given now. Every other flag shapes the
# result, so a --resume takes it from the checkpoint and refuses a different value.
RUN_FLAGS = {"output_folder", "data_folder", "device", "num_workers", "log_interval", "overwrite", "amp", "compile",
             "channels_last", "threads", "time_limit", "resume", "prior_only"}
# The flag that sets each PriorSettings field: prior_last.pt stores the settings, and a --resume checks them as these.
PRIOR_SETTING_FLAGS = {"epochs": "prior_epochs", "batch_size": "prior_batch_size", "lr": "prior_lr",
                       "class_dropout": "class_dropout", "seed": "seed", "amp": "amp", "log_interval": "log_interval"}


def bottleneck_flags(name: str) -> set[str]:
    """The dests of the flags that set the bottleneck `name`'s Config."""
    return {field.name for field in fields(BOTTLENECKS[name].Config)}


def add_model_flags(parser: ArgumentParser) -> None:
    """The autoencoder's flags, each one's dest the VQVAEConfig field it sets, then every registered bottleneck's,
    each one's dest the field of its Config (model_config reads them); a field bottlenecks share is one flag."""
    model = parser.add_argument_group("model (stored in the checkpoint)")
    added = set(add_option_flags(model, VQVAEConfig))
    for bottleneck in BOTTLENECKS.values():
        added.update(add_option_flags(model, bottleneck.Config, skip=added))


def add_prior_flags(parser: ArgumentParser) -> None:
    """The prior's flags; a dest prior_FIELD sets the PriorConfig field FIELD (prior_config reads them)."""
    prior = parser.add_argument_group("prior over the codes (trained after the autoencoder, stored in best.pt)")
    prior.add_argument("--prior-epochs", type=integer(0, MAX_EPOCHS), default=DEFAULT_PRIOR_EPOCHS,
                       help="epochs of the prior on the codes of the best autoencoder; 0 skips it "
                            f"(default: {DEFAULT_PRIOR_EPOCHS})")
    prior.add_argument("--prior-only", action="store_true",
                       help="train (or retrain) only the prior of the existing models/NAME/best.pt, replacing its "
                            "prior if it has one")
    add_option_flags(prior, PriorConfig, prefix="prior_")
    prior.add_argument("--prior-batch-size", type=integer(1, MAX_BATCH), default=DEFAULT_PRIOR_BATCH_SIZE,
                       help=f"code grids per batch of the prior, at most {MAX_BATCH} (default: "
                            f"{DEFAULT_PRIOR_BATCH_SIZE})")
    prior.add_argument("--prior-lr", type=number(0, MAX_LEARNING_RATE, above_low=True), default=PriorSettings.lr,
                       help="peak AdamW learning rate of the prior, after a warm-up, decayed to 0 along a cosine "
                            f"(default: {PriorSettings.lr})")
    prior.add_argument("--class-dropout", type=unit_interval, default=PriorSettings.class_dropout,
                       help="fraction of training grids shown to the prior without their class, so that it also "
                            f"samples unconditionally (default: {PriorSettings.class_dropout})")


def add_run_flags(parser: ArgumentParser) -> None:
    """How to run (RUN_FLAGS): they may change on a --resume."""
    parser.add_argument("--num-workers", type=integer(0, MAX_WORKERS), default=0,
                        help="DataLoader worker processes; the data is already in memory (default: 0)")
    parser.add_argument("--log-interval", type=integer(1, MAX_STEPS_BETWEEN_LOGS), default=20,
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
    parser.add_argument("--threads", type=integer(0, MAX_THREADS), default=DEFAULT_THREADS,
                        help=f"CPU threads, 1 to {MAX_THREADS}; 0: PyTorch's one per core, with one fewer or half of "
                             "them whenever a timed probe every 20 s finds that faster, as when another program "
                             "keeps a core busy; faster on a shared machine, but sums split differently between "
                             "thread counts, so the weights then depend on the load: the same seed no longer gives "
                             f"the same model (default: {DEFAULT_THREADS}, one per core: reproducible)")
    parser.add_argument("--time-limit", type=number(0, MAX_SECONDS), default=0, metavar="SECONDS",
                        help="stop as Ctrl-C does (last.pt saved, --resume goes on) once this many seconds have "
                             "passed since the start; 0: no limit (default: 0)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in models/NAME where it stopped, with its own flags: its autoencoder "
                             "(last.pt), or its prior (prior_last.pt)")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Train a VQ-VAE on MNIST.")
    parser.add_argument("--output-folder", type=plain_name, default="vqvae",
                        help="run name: logs go to logs/NAME, checkpoints to models/NAME (default: vqvae)")
    parser.add_argument("--data-folder", default="data",
                        help="folder holding MNIST/raw/*-ubyte.gz, or the .gz files themselves (default: data)")
    parser.add_argument("--dataset", choices=DATASETS, default="mnist",
                        help="what to train on: mnist, fashion-mnist or kmnist, their original files checked by their "
                             "MD5s (in --data-folder or its MNIST/raw, FashionMNIST/raw, KMNIST/raw), or own: one's "
                             "own train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
                             "t10k-labels-idx1-ubyte (gzipped or not) in --data-folder, 28x28 digits with classes 0 "
                             "to 9, checked by their format alone (default: mnist)")
    add_device_flag(parser, "train on")
    add_model_flags(parser)
    add_prior_flags(parser)
    parser.add_argument("--batch-size", type=integer(1, MAX_BATCH), default=64,
                        help=f"images per batch, at most {MAX_BATCH} (default: 64)")
    parser.add_argument("--num-epochs", type=integer(1, MAX_EPOCHS), default=8, help="epochs to train (default: 8)")
    parser.add_argument("--lr", type=number(0, MAX_LEARNING_RATE, above_low=True), default=2e-3,
                        help="Adam learning rate (default: 2e-3)")
    parser.add_argument("--lr-schedule", choices=["cosine", "constant"], default="cosine",
                        help="cosine: decay the learning rate to 0 over the run's steps (default: cosine)")
    parser.add_argument("--seed", type=integer(0, MAX_SEED), default=0,
                        help="seed of the weights and the batch order (default: 0)")
    parser.add_argument("--val-size", type=integer(1, MAX_VALIDATION), default=5000,
                        help="last training images held out for validation (default: 5000)")
    add_run_flags(parser)
    return parser


def model_config(args) -> VQVAEConfig:
    """The model's shape from its flags: the autoencoder's fields, and the chosen bottleneck's Config."""
    bottleneck_config = BOTTLENECKS[args.bottleneck].Config(**{name: getattr(args, name)
                                                               for name in bottleneck_flags(args.bottleneck)})
    return VQVAEConfig(**{field.name: getattr(args, field.name) for field in fields(VQVAEConfig)
                          if hasattr(args, field.name)}, bottleneck_config=bottleneck_config)


def prior_config(args) -> PriorConfig:
    """The prior's shape from its flags; train_prior sets its number of codes and grid size from the autoencoder."""
    return PriorConfig(**{field.name: getattr(args, f"prior_{field.name}") for field in fields(PriorConfig)
                          if hasattr(args, f"prior_{field.name}")})


def training_settings(args) -> TrainingSettings:
    return TrainingSettings(**{field.name: getattr(args, field.name) for field in fields(TrainingSettings)})


def prior_settings(args) -> PriorSettings:
    return PriorSettings(**{field: getattr(args, dest) for field, dest in PRIOR_SETTING_FLAGS.items()})


def size_flags(name: str) -> str:
    """The flags that size the autoencoder with the bottleneck `name`, for advice on a model too large."""
    flag_names = build_parser().flag_names()
    sizing = [flag_names[field.name] for field in fields(BOTTLENECKS[name].Config)
              if field.type in (int, "int", tuple[int, ...], "tuple[int, ...]")]
    return ", ".join(["--hidden-size", "--num-residual-blocks", *sizing])


def check_sizes(args) -> None:
    """Refuse flags whose autoencoder or prior would be larger than this project builds, or whose training step
    would cost more than one step may (limits.check_step_cost), before anything trains: each is counted on the meta
    device, where nothing is allocated."""
    try:
        config = model_config(args)
    except ValueError as error:
        raise UserError(f"--bottleneck {args.bottleneck}: {error}: change that flag") from None
    try:
        bottleneck = check_size(lambda: VQVAE(config), "the autoencoder").bottleneck
        check_step_cost(bottleneck.step_cost(args.batch_size * VQVAE.latent_side ** 2), "a training step")
    except ValueError as error:
        raise UserError(f"{error}: lower --batch-size, {size_flags(args.bottleneck)}") from None
    if bottleneck.discrete and args.prior_epochs:
        prior = replace(prior_config(args), num_embeddings=bottleneck.num_embeddings, levels=bottleneck.code_levels)
        try:
            check_size(lambda: CodePrior(prior), "the prior")
        except ValueError as error:
            raise UserError(f"{error}: lower --prior-width or --prior-layers") from None


def check_stray(args, typed: set[str], whose: str) -> None:
    """Refuse a bottleneck's flag typed for another bottleneck (`whose` names the one the run has)."""
    stray = {name for name in typed
             if any(name in bottleneck_flags(other) for other in BOTTLENECKS)} - bottleneck_flags(args.bottleneck)
    if stray:
        flag_names = build_parser().flag_names()
        one = len(stray) == 1
        raise UserError(f"{' and '.join(sorted(flag_names[name] for name in stray))} {'does' if one else 'do'} "
                        f"not apply to {whose}: drop {'it' if one else 'them'}, or choose the bottleneck that "
                        f"takes {'it' if one else 'them'}")


def check_flags(args) -> None:
    """Refuse flags that do not go together or ask for too much, before anything is made."""
    if args.prior_width % args.prior_num_heads:
        raise UserError(f"--prior-heads {args.prior_num_heads} must divide --prior-width {args.prior_width}")
    check_sizes(args)


def resume_command(name: str) -> str:
    return f"python vqvae.py --output-folder {shlex.quote(name)} --resume"


def resume_args(args, parser: ArgumentParser) -> tuple[argparse.Namespace, dict | None]:
    """Without --resume: (args, None). With it: the run's own flags from models/NAME/last.pt, each checked as the
    flag would be if typed, and that checkpoint; a flag given now that contradicts them is an error. Called with the
    run folder held, so that no other run writes last.pt between this read and the run's first save."""
    if not args.resume:
        return args, None
    path = run_folders(args.output_folder).model_dir / "last.pt"
    checkpoint = load_checkpoint(path)
    if not all(key in checkpoint for key in TRAINING_KEYS):
        raise UserError(f"{path} holds no training state to resume from; start a new run with --overwrite")
    saved, flag_names = checkpoint["args"], parser.flag_names()
    if not isinstance(saved, dict):
        raise UserError(f"{path}: its stored flags are a {type(saved).__name__}, not a dict: {DAMAGED}")
    result_names = [name for name in vars(args) if name not in RUN_FLAGS]
    check_stored_flags(parser, saved, result_names, path)
    # A checkpoint from before a flag existed lacks it: the flag takes its default.
    result_flags = {name: saved.get(name, parser.get_default(name)) for name in result_names}
    # Arguments know the flags the user typed; of a plain Namespace, only the values that are not defaults tell.
    typed = (args.typed if isinstance(args, Arguments)
             else {name for name, value in vars(args).items() if value != parser.get_default(name)})
    check_stray(argparse.Namespace(bottleneck=result_flags["bottleneck"]), typed,
                f"the bottleneck {result_flags['bottleneck']} of {path}")
    for name, kept in result_flags.items():
        given = getattr(args, name)
        if name in typed and given != kept:
            flag = flag_names[name]
            raise UserError(f"--resume continues {path} with its own {flag} {as_typed(kept)}: drop {flag} "
                            f"{as_typed(given)}, or start a new run")
    return argparse.Namespace(**{**vars(args), **result_flags}), checkpoint


def check_resumed_flags(args, path: Path) -> None:
    """check_flags on the flags a --resume took from last.pt (at `path`): one that is refused names the file."""
    try:
        check_flags(args)
    except UserError as error:
        raise UserError(f"{path}: its stored flags are refused ({error}): {DAMAGED}") from None


def check_resumed(checkpoint: dict, args, steps_per_epoch: int) -> None:
    """Refuse a last.pt whose model config is not the one its flags make, whose weights do not fit it as they are,
    or whose place in the run does not hold together (checkpoint_checks), before anything is built from it."""
    path = run_folders(args.output_folder).model_dir / "last.pt"
    stored, config = stored_autoencoder(checkpoint, path), model_config(args)
    if stored.config != config:
        differ = [name for name in asdict(config) if asdict(config)[name] != asdict(stored.config)[name]]
        raise UserError(f"{path}: its model config and its stored flags disagree on {', '.join(differ)}: {DAMAGED}")
    check_weights(stored, checkpoint["model"], path)
    check_place(checkpoint, path, args.num_epochs, steps_per_epoch)


def set_up(args, processes: Processes, splits: Splits, resumed: dict | None) -> tuple[AutoencoderTask, RunState]:
    """The run folders, the model (wrapped by DDP and torch.compile where asked), its optimizer and schedule as the
    autoencoder's task, and where the run stands: at its start, or where the --resume checkpoint left it."""
    rank, world_size, device = processes
    log_dir, model_dir = prepare_run_folders(args.output_folder, args.overwrite, args.resume, create=rank == 0)
    settings = training_settings(args)
    # The training set lives in memory as one uint8 tensor, on the training device unless workers read it.
    train_images = splits.train_images.to(device if args.num_workers == 0 else "cpu")
    model = VQVAE(model_config(args)).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)  # before DDP, which must see the final parameters
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed 28x28 shapes: let cuDNN pick its fastest kernels once
    # DDP averages the gradients over the processes; the bottleneck keeps its own state in step itself.
    forward = model
    if world_size > 1:
        forward = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    # The compiled module shares the plain one's parameters and buffers; checkpoints save the plain one.
    forward = torch.compile(forward) if args.compile else forward
    optimizer = make_optimizer(model, settings.lr)
    steps_per_epoch = math.ceil(shard_size(len(train_images), world_size) / settings.batch_size)
    schedule = make_schedule(optimizer, settings, steps_per_epoch)
    shuffle_generator = torch.Generator().manual_seed(settings.seed)
    state = RunState()
    if resumed is not None:
        check_optimizer(optimizer, resumed["optimizer"], model_dir / "last.pt")
        state = restore_training(resumed, model, optimizer, schedule, device)
        shuffle_generator.set_state(state.shuffle_rng)
        if state.best_epoch and not (model_dir / "best.pt").is_file():
            if rank == 0:
                print(f"{model_dir / 'best.pt'} is missing, and with it epoch {state.best_epoch}'s autoencoder: "
                      "best.pt will be the best of the epochs still to train")
            state.best_score, state.best_epoch = math.inf, 0
    # purge_step drops events an interrupted run wrote after its last checkpoint, so the curves do not jump.
    writer = (SummaryWriter(log_dir, purge_step=state.step + 1 if resumed is not None else None) if rank == 0
              else NoWriter())
    task = AutoencoderTask(model=model, forward=forward, optimizer=optimizer, schedule=schedule,
                           shuffle_generator=shuffle_generator, train_images=train_images,
                           val_images=splits.val_images, settings=settings, processes=processes,
                           steps_per_epoch=steps_per_epoch, model_dir=model_dir, flags=vars(args),
                           resume_command=resume_command(args.output_folder), writer=writer)
    return task, state


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


def best_to_give_a_prior(args) -> Path:
    """models/NAME/best.pt, whose autoencoder the prior is trained for; one line if there is none."""
    path = run_folders(args.output_folder).model_dir / "best.pt"
    if not path.is_file():
        raise UserError(f"there is no {path} to train a prior for; train the autoencoder first with python vqvae.py "
                        f"--output-folder {shlex.quote(args.output_folder)}")
    return path


def give_prior(args, device: torch.device, deadline: float, splits: Splits | None = None,
               writer: SummaryWriter | None = None, resumed: dict | None = None) -> None:
    """Train the prior of models/NAME/best.pt and store it there, whichever way the run comes here: after its
    autoencoder trained (with the run's splits and writer), on a --resume (going on with `resumed`, the
    prior_last.pt of a prior that stopped), or with --prior-only. The splits are the autoencoder's own (its
    --val-size), so the prior is validated on grids it did not train on."""
    log_dir, model_dir = run_folders(args.output_folder)
    path = best_to_give_a_prior(args)
    # The checkpoint stays on the CPU, since it is written back with the new prior; the old one is not read.
    model, _, checkpoint, _ = load_model(path, "cpu", with_prior=False)
    model.to(device)
    if not model.discrete:
        raise UserError(f"{path} has a continuous bottleneck ({model.config.bottleneck}): it has no codes for a "
                        "prior to model, and samples its latents from its own prior (python generate.py --input "
                        "random)")
    if splits is None:
        splits = load_splits(args.data_folder, checkpoint["args"].get("val_size", args.val_size),
                             trained_dataset(checkpoint, path))
    figures = RunFigures(model_dir, fresh=False)
    make_folder(log_dir)
    # The run's own writer when it has one, so that its curves stay in one event file; else one of the prior's own.
    with (SummaryWriter(log_dir) if writer is None else contextlib.nullcontext(writer)) as writer, \
            StopOnSignal(deadline) as stop, running_out_is_a_user_error(
                f"lower --prior-batch-size (now {args.prior_batch_size})", model_dir / "prior_last.pt",
                "--resume" if (model_dir / "last.pt").is_file() else "--prior-only"):
        train_prior(model, checkpoint, model_dir, splits, prior_settings(args), prior_config(args), resumed,
                    resume_command(args.output_folder), writer, stop, device, figures,
                    ThreadChooser.for_training(device, args.threads))


def prior_only(args, device: torch.device, deadline: float) -> None:
    """--prior-only: fit a prior for the autoencoder an earlier run left in models/NAME/best.pt."""
    if args.resume or args.overwrite:
        raise UserError("--prior-only trains only the prior of an existing run: drop --resume and --overwrite")
    if args.prior_epochs == 0:
        raise UserError("--prior-only with --prior-epochs 0 has nothing to do: give --prior-epochs N")
    best_to_give_a_prior(args)  # checked before the lock would make the folder
    with hold_run_folder(run_folders(args.output_folder).model_dir):
        give_prior(args, device, deadline)


def load_prior_state(path: Path) -> dict | None:
    """prior_last.pt (None if there is none), its settings checked as the flags that set them would be if typed, and
    where it stands."""
    checkpoint = load_prior_training(path)
    if checkpoint is None:
        return None
    settings = checkpoint["settings"]
    if not isinstance(settings, dict) or settings.keys() != PRIOR_SETTING_FLAGS.keys():
        raise UserError(f"{path}: its prior settings are not {', '.join(PRIOR_SETTING_FLAGS)}: {DAMAGED}")
    check_stored_flags(build_parser(), settings, PRIOR_SETTING_FLAGS, path, "prior settings", PRIOR_SETTING_FLAGS)
    check_count(checkpoint["autoencoder_step"], path, "autoencoder step", 0, MAX_STEP)
    check_count(checkpoint["epoch"], path, "epoch", 0, settings["epochs"])
    check_count(checkpoint["step"], path, "step", 0, MAX_STEP)
    return checkpoint


def missing_best(model_dir: Path) -> UserError:
    """The line for a run whose autoencoder finished but whose best.pt, which its prior is for, is gone."""
    best, last = model_dir / "best.pt", model_dir / "last.pt"
    return UserError(f"{best} is missing, so the prior has no autoencoder to model: copy {last} (the last epoch's "
                     f"autoencoder) to {best} and --resume again, or start a new run with --overwrite")


def resume_prior_only(args, device: torch.device, deadline: float) -> None:
    """A --resume of a folder whose prior alone was trained here (--prior-only beside a best.pt without last.pt)."""
    model_dir = run_folders(args.output_folder).model_dir
    with hold_run_folder(model_dir):
        if not (model_dir / "best.pt").is_file():
            raise missing_best(model_dir)
        resumed = load_prior_state(model_dir / "prior_last.pt")
        if resumable(resumed, load_checkpoint(model_dir / "best.pt")):
            give_prior(args, device, deadline, resumed=resumed)
        else:
            print(f"{model_dir / 'prior_last.pt'} already finished its prior epochs; nothing to do")


def finish_resumed(args, processes: Processes, splits: Splits, deadline: float) -> None:
    """A --resume of a run whose autoencoder has finished its epochs: its prior goes on where it stopped, or trains
    from its start where it has not started or where prior_last.pt, which says where it stood, is gone; else there
    is nothing to do."""
    if processes.rank != 0:
        return
    model_dir = run_folders(args.output_folder).model_dir
    last, best_path, prior_last = model_dir / "last.pt", model_dir / "best.pt", model_dir / "prior_last.pt"
    if not (args.prior_epochs and BOTTLENECKS[args.bottleneck].discrete):
        print(f"{last} already finished its {args.num_epochs} epochs; nothing to do")
        return
    if not best_path.is_file():
        raise missing_best(model_dir)
    best, resumed = load_checkpoint(best_path), load_prior_state(prior_last)
    if resumable(resumed, best):
        give_prior(args, processes.device, deadline, splits, resumed=resumed)
    elif "prior" not in best or resumed is None or resumed["autoencoder_step"] != best["step"]:
        why = ("it has no prior yet" if "prior" not in best else
               f"{prior_last}, which says where its prior stood, is missing" if resumed is None else
               f"{prior_last} is the prior of another autoencoder")
        print(f"{last} already finished its {args.num_epochs} epochs, but {why}: training its prior from its start")
        give_prior(args, processes.device, deadline, splits)
    else:
        print(f"{last} already finished its {args.num_epochs} epochs and its prior its "
              f"{resumed['settings']['epochs']}; nothing to do")


def training_splits(args, world_size: int) -> Splits:
    """The splits of --dataset and --val-size, refused where a batch would be larger than a process's training
    images."""
    splits = load_splits(args.data_folder, args.val_size, args.dataset)
    if args.batch_size > shard_size(len(splits.train_images), world_size):
        raise UserError(f"--batch-size {args.batch_size} is more than the {len(splits.train_images):,} training "
                        f"images{' of each process' if world_size > 1 else ''}: give a smaller one")
    return splits


def train(args, processes: Processes, deadline: float = math.inf) -> VQVAE | None:
    """The autoencoder's epochs, then its prior; returns the autoencoder (None when there was nothing to train)."""
    model_dir = run_folders(args.output_folder).model_dir
    if args.resume and args.overwrite:
        raise UserError("--resume continues a run and --overwrite replaces it: pass only one")
    if args.resume and not (model_dir / "last.pt").is_file():
        raise UserError(f"--resume: there is no {model_dir / 'last.pt'} to continue; start the run without --resume")
    splits = None if args.resume else training_splits(args, processes.world_size)  # before the folder is made
    # The folder is held before last.pt is read: a run that ends after this read cannot then have its newer last.pt
    # replaced by this one's older state.
    with hold_run_folder(model_dir, hold=processes.rank == 0):
        if processes.world_size > 1:
            dist.barrier()  # the others read last.pt only once process 0 holds the folder
        args, resumed = resume_args(args, build_parser())
        if resumed is not None:
            check_resumed_flags(args, model_dir / "last.pt")
        torch.manual_seed(args.seed)
        if resumed is not None:  # its --val-size is the checkpoint's
            splits = training_splits(args, processes.world_size)
            check_resumed(resumed, args, math.ceil(shard_size(len(splits.train_images), processes.world_size)
                                                   / args.batch_size))
            if resumed["epoch"] >= args.num_epochs:
                finish_resumed(args, processes, splits, deadline)
                return None
        task, state = set_up(args, processes, splits, resumed)
        announce(task, state, args)
        main_process = processes.rank == 0
        figures = RunFigures(task.model_dir, fresh=resumed is None, enabled=main_process)
        if resumed is None:
            figures.start("autoencoder")
        started = time.perf_counter()
        with StopOnSignal(deadline) as stop, running_out_is_a_user_error(
                f"lower --batch-size (now {args.batch_size}), {size_flags(args.bottleneck)} and start again with "
                "--overwrite", task.last_path, "--resume"):
            train_epochs(task, state, LoopSettings(args.num_epochs, args.log_interval, processes.device,
                                                   main_process, processes.world_size),
                         stop, task.writer, figures, ThreadChooser.for_training(processes.device, args.threads))
        if processes.world_size > 1:
            dist.barrier()  # the others leave only once process 0 has written the last checkpoint
        if main_process:
            seconds = time.perf_counter() - started
            figures.finished("autoencoder", seconds=seconds, best_epoch=state.best_epoch)
            best = task.model_dir / "best.pt"
            print(f"autoencoder trained in {seconds:.0f} s; {best_line(best, state.best_epoch, task.last_path)}")
            if args.prior_epochs and task.model.discrete:
                if not best.is_file():
                    raise missing_best(task.model_dir)
                # The prior is small and trains in the one process; under torchrun the others are done.
                give_prior(args, processes.device, deadline, splits, task.writer)
        task.writer.close()
    return task.model


def best_line(best: Path, best_epoch: int, last: Path) -> str:
    """Where the run's best autoencoder is, and what to run next; or, where best.pt was deleted during the run, that
    it is gone and what last.pt holds."""
    if best.is_file():
        return (f"best: {best} (epoch {best_epoch}); python generate.py --model {shlex.quote(str(best))} --input "
                "MNIST --filename recon")
    return (f"{best} was deleted during the run, and no later epoch did better: {last} holds the last epoch's "
            f"autoencoder (python generate.py --model {shlex.quote(str(last))} --input MNIST --filename recon)")


def main(args):
    """Train as the command line says; returns the trained autoencoder (None when there was nothing to train)."""
    if not args.resume:  # a resumed run's flags are its checkpoint's, checked once read
        if isinstance(args, Arguments):
            check_stray(args, args.typed, f"--bottleneck {args.bottleneck}")
        check_flags(args)
    deadline = time.monotonic() + args.time_limit if args.time_limit else math.inf
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    with process_group(args.device) as processes:
        if args.amp is None:
            args.amp = native_bf16(processes.device)
        if args.prior_only:
            if processes.world_size > 1:
                raise UserError("--prior-only runs in one process: start it with python vqvae.py, not torchrun")
            prior_only(args, processes.device, deadline)
            return None
        model_dir = run_folders(args.output_folder).model_dir
        if args.resume and not (model_dir / "last.pt").is_file() and (model_dir / "prior_last.pt").is_file() \
                and processes.world_size == 1:
            resume_prior_only(args, processes.device, deadline)
            return None
        return train(args, processes, deadline)


if __name__ == "__main__":
    run_cli(main, build_parser().parse_args())
