"""vqvae.py's command line: its flags, made from the configs, and their checks, whether typed or read back by
a --resume from the run's checkpoints."""
import argparse
import shlex
from collections.abc import Iterable
from dataclasses import asdict, fields, replace
from pathlib import Path

from modules import BOTTLENECKS, VQVAE, VQVAEConfig
from options import flag_dest, from_flags, option_fields
from prior import CodePrior, PriorConfig
from vqmnist.checkpoints.checks import DAMAGED, MAX_STEP, check_count, check_place, check_weights
from vqmnist.checkpoints.format import TRAINING_KEYS, load_checkpoint, load_prior_training
from vqmnist.checkpoints.loading import stored_autoencoder
from vqmnist.configuration.cli import (ArgumentParser, Arguments, add_device_flag, add_option_flags, integer, number,
                                       plain_name, refuse_inapplicable)
from vqmnist.configuration.errors import UserError, shown
from vqmnist.configuration.limits import MAX_SECONDS, MAX_THREADS, check_size, check_step_cost
from vqmnist.io.data import DATASETS
from vqmnist.running.autoencoder_task import TrainingSettings
from vqmnist.running.machine import DEFAULT_THREADS
from vqmnist.running.prior_task import PriorSettings
from vqmnist.running.run_folder import run_folders

# Flags that say how to run, not what is trained: a --resume takes them as given now. Every other flag shapes the
# result, so a --resume takes it from the checkpoint and refuses a different value.
RUN_FLAGS = {"output_folder", "data_folder", "device", "num_workers", "log_interval", "overwrite", "amp", "compile",
             "channels_last", "threads", "time_limit", "resume", "prior_only"}
# Run flags a --resume takes from the checkpoint where they are not typed again: where the data is, and those that
# change the sums (the thread count splits them differently, bf16, compiled kernels and the memory format round
# differently), so that the printed resume command ends where the unbroken run would.
KEPT_RUN_FLAGS = ("data_folder", "threads", "amp", "compile", "channels_last")
# Run flags whose change on a --resume changes the result: a --resume that changes one says so.
RESULT_RUN_FLAGS = ("device", "threads", "amp", "compile", "channels_last")
# The flag's dest of each PriorSettings field: prior_last.pt stores the settings, and a --resume checks them as these.
PRIOR_SETTING_FLAGS = {item.name: flag_dest(item) for item in option_fields(PriorSettings)}
# The settings the autoencoder's and the prior's flags share (--seed, --log-interval), declared with the former.
SHARED_SETTINGS = {item.name for item in option_fields(PriorSettings) if item.metadata["shared"] is not None}


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
    """The prior's flags: its PriorSettings' (a dest as options.flag_dest says) and its PriorConfig's, each dest
    prior_FIELD for the field FIELD (prior_config reads them)."""
    prior = parser.add_argument_group("prior over the codes (trained after the autoencoder, stored in best.pt)")
    prior.add_argument("--prior-only", action="store_true",
                       help="train (or retrain) only the prior of the existing models/NAME/best.pt, replacing its "
                            "prior if it has one")
    add_option_flags(prior, PriorSettings, skip={"batch_size", "lr", "class_dropout", "distorted", *SHARED_SETTINGS})
    add_option_flags(prior, PriorConfig, prefix="prior_")
    add_option_flags(prior, PriorSettings, skip={"epochs", *SHARED_SETTINGS})


def add_run_flags(parser: ArgumentParser) -> None:
    """How to run (RUN_FLAGS): they may change on a --resume; --num-workers and --log-interval, also among them, are
    the autoencoder's settings' (add_training_flags)."""
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
    add_option_flags(parser, TrainingSettings)
    add_run_flags(parser)
    return parser


def model_config(args) -> VQVAEConfig:
    """The model's shape from its flags: the autoencoder's fields, and the chosen bottleneck's Config."""
    return from_flags(VQVAEConfig, args, bottleneck_config=from_flags(BOTTLENECKS[args.bottleneck].Config, args))


def prior_config(args) -> PriorConfig:
    """The prior's shape from its flags; its task sets its number of codes and grid size from the autoencoder."""
    return from_flags(PriorConfig, args, prefix="prior_")


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


def check_request(args) -> None:
    """Refuse flags that contradict each other or their bottleneck, or that cannot apply, before anything is read or
    made. A resumed run's own flags are its checkpoint's, checked once read (check_resumed_flags)."""
    if args.resume and args.overwrite:
        raise UserError("--resume continues a run and --overwrite replaces it: pass only one")
    if args.prior_only and (args.resume or args.overwrite):
        raise UserError("--prior-only trains only the prior of an existing run: drop --resume and --overwrite")
    if args.prior_only and args.prior_epochs == 0:
        raise UserError("--prior-only with --prior-epochs 0 has nothing to do: give --prior-epochs N")
    flag_names = build_parser().flag_names()
    if args.prior_only:
        refuse_inapplicable(args, autoencoder_flags(), "with --prior-only, which trains a prior for best.pt's "
                            "autoencoder as it is, on the data it trained on", flag_names)
    if not args.resume:
        prior_flags = prior_training_flags()
        if not BOTTLENECKS[args.bottleneck].discrete:
            refuse_inapplicable(args, prior_flags, f"to --bottleneck {args.bottleneck}, which has no codes for a "
                                "prior", flag_names)
        if args.prior_epochs == 0:
            refuse_inapplicable(args, prior_flags, "with --prior-epochs 0, which trains no prior", flag_names)
        if isinstance(args, Arguments):
            check_stray(args, args.typed, f"--bottleneck {args.bottleneck}")
            if "mixture_components" in args.typed and args.decoder_output != "logistic":
                raise UserError(f"--mixture-components is the logistic decoder's, not --decoder-output "
                                f"{args.decoder_output}'s: drop it, or give --decoder-output logistic")
        check_flags(args)


def autoencoder_flags() -> set[str]:
    """The dests of the flags that shape or train the autoencoder alone: its model's and bottlenecks', how it trains
    (but --seed, --log-interval and --amp, which the prior's training shares) and the data set it reads."""
    return ({flag_dest(item) for item in option_fields(VQVAEConfig)}
            | {flag_dest(item) for bottleneck in BOTTLENECKS.values() for item in option_fields(bottleneck.Config)}
            | {flag_dest(item) for item in option_fields(TrainingSettings) if item.metadata["flag"] is not None
               and item.name not in SHARED_SETTINGS}
            | {"dataset", "compile", "channels_last"})


def prior_training_flags() -> set[str]:
    """The dests of the prior's own flags (--prior-epochs aside): its shape's and how it trains."""
    return ({flag_dest(item, "prior_") for item in option_fields(PriorConfig) if item.metadata["flag"] is not None}
            | {flag_dest(item) for item in option_fields(PriorSettings) if item.metadata["flag"] is not None
               and item.name not in SHARED_SETTINGS and item.name != "epochs"})


def resume_args(args, parser: ArgumentParser) -> tuple[argparse.Namespace, dict]:
    """The run's own flags from models/NAME/last.pt, each checked as the flag would be if typed, and that checkpoint;
    a flag given now that contradicts them is an error. Called with the run folder held, so that no other run
    writes last.pt between this read and the run's first save."""
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
    kept = kept_run_flags(args, saved, typed, path, parser)
    return argparse.Namespace(**{**vars(args), **result_flags, **kept}), checkpoint


def kept_run_flags(args, saved: dict, typed: set[str], path: Path, parser: ArgumentParser,
                   names=KEPT_RUN_FLAGS) -> dict:
    """The run flags of `names` that a --resume takes from the stopped run's stored flags `saved` (those not typed
    now, and stored: a checkpoint from before a flag lacks it), each checked as if typed; one line says where a flag
    typed now (RESULT_RUN_FLAGS) differs from the stored run's, since the result will then differ from the unbroken
    run's. `parser` is vqvae.py's, whose checks the stored values pass."""
    stored = [name for name in names if name not in typed and name in saved]
    check_stored_flags(parser, saved, stored, path)
    changed = [name for name in RESULT_RUN_FLAGS
               if name in typed and name in saved and getattr(args, name) != saved[name]]
    if changed:
        flag_names = parser.flag_names()
        print(f"note: {', '.join(f'{flag_names[name]} {as_typed(getattr(args, name))}' for name in changed)} "
              f"differ{'s' if len(changed) == 1 else ''} from the stopped run's "
              f"({', '.join(f'{flag_names[name]} {as_typed(saved[name])}' for name in changed)}): the weights will "
              "not be those the unbroken run would have ended with")
    return {name: saved[name] for name in stored}


def with_the_runs_data_folder(args, checkpoint: dict, path: Path):
    """args, with the data folder of the run that wrote `checkpoint` (best.pt, whose prior trains now) where
    --data-folder is not typed: its digits are where that run found them."""
    typed = getattr(args, "typed", set())
    saved = checkpoint["args"] if isinstance(checkpoint["args"], dict) else {}
    kept = kept_run_flags(args, saved, typed, path, build_parser(), names=("data_folder",))
    return argparse.Namespace(**{**vars(args), **kept})


def resume_command(args) -> str:
    """The command that continues this run where it stops: its folder and --resume, and the run flags a --resume
    would not take from the checkpoint that differ from their defaults (the device); those it takes (KEPT_RUN_FLAGS)
    it finds in the checkpoint."""
    parser, words = build_parser(), ["python", "vqvae.py", "--output-folder", args.output_folder, "--resume"]
    if args.device != parser.get_default("device"):
        words += ["--device", args.device]
    return shlex.join(words)


def check_resumed_flags(args, path: Path) -> None:
    """check_flags on the flags a --resume took from last.pt (at `path`): one that is refused names the file."""
    try:
        check_flags(args)
    except UserError as error:
        raise UserError(f"{path}: its stored flags are refused ({error}): {DAMAGED}") from None


def check_resumed(checkpoint: dict, args, epoch_steps: int) -> None:
    """Refuse a last.pt whose model config is not the one its flags make, whose weights do not fit it as they are,
    or whose place in the run (its epoch of `epoch_steps` steps) does not hold together, before anything is built
    from it."""
    path = run_folders(args.output_folder).model_dir / "last.pt"
    stored, config = stored_autoencoder(checkpoint, path), model_config(args)
    if stored.config != config:
        differ = [name for name in asdict(config) if asdict(config)[name] != asdict(stored.config)[name]]
        raise UserError(f"{path}: its model config and its stored flags disagree on {', '.join(differ)}: {DAMAGED}")
    check_weights(stored, checkpoint["model"], path)
    check_place(checkpoint, path, args.num_epochs, epoch_steps)


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


def as_typed(value) -> str:
    """A flag's value as it is typed on the command line: 8,8,8 rather than (8, 8, 8)."""
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def flag_problem(action: argparse.Action, value) -> str | None:
    """What is wrong with `value` as the value of the flag `action`, had it been typed; None if nothing is."""
    if action.nargs == 0:  # --flag / --no-flag: a switch
        return None if type(value) is bool else "must be true or false"
    scalar = (int, float, str)
    if type(value) not in scalar + (tuple, list) or (
            type(value) in (tuple, list) and not all(type(item) in scalar for item in value)):
        return f"is a {type(value).__name__}, which no flag takes"
    try:
        text = as_typed(value)
        parsed = action.type(text) if action.type is not None else text
    except (argparse.ArgumentTypeError, ValueError, TypeError) as error:
        return f"is refused as the flag would be ({str(error)[:120]})"
    if type(parsed) is not type(value) and not (type(value) is list and type(parsed) is tuple):
        return f"is of type {type(value).__name__} where the flag gives {type(parsed).__name__}"
    if (tuple(value) if type(value) is list else value) != parsed:
        return "does not read back as itself"
    if action.choices is not None and parsed not in action.choices:
        return f"must be one of {', '.join(map(str, action.choices))}"
    return None


def check_stored_flags(parser: argparse.ArgumentParser, stored: dict, dests: Iterable[str], path: Path,
                       where: str = "flags", names: dict[str, str] | None = None) -> None:
    """Refuse, in one line naming the file and the flag, a value in `stored` (dest -> value; `names` maps a stored
    name to its flag's dest where they differ) of one of `dests` that the flag would refuse if typed."""
    actions = {action.dest: action for action in parser._actions if action.option_strings}
    names = names or {}
    for name in dests:
        if name not in stored:
            continue
        action = actions[names.get(name, name)]
        problem = flag_problem(action, stored[name])
        if problem is not None:
            raise UserError(f"{path}: its stored {where} give {action.option_strings[0]} {shown(stored[name])}, which "
                            f"{problem}: the file was edited or damaged; use a checkpoint vqvae.py wrote, or start "
                            "a new run with --overwrite")
