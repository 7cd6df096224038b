"""Score a trained VQ-VAE on the MNIST test set (10,000 digits), and the digits its prior samples.

Usage:
    python evaluate.py --model models/vqvae/best.pt
    python evaluate.py --model models/vqvae/best.pt --samples 0      # reconstructions only
    python evaluate.py --model models/vqvae/best.pt --json           # one JSON object, for scripts

Reconstructions: the MSE in [0, 1] pixel space (averaged over every pixel of the test set), the PSNR
10 log10(1 / MSE) in dB, the SSIM (torchmetrics' structural similarity, 11-pixel Gaussian window), the same two as
published MNIST tables compute them (`published_protocol` in --json: each reconstruction rounded to 8 bits, PSNR
10 log10(255^2 / MSE) and SSIM per image against its 8-bit digit, then averaged over the images), the
bottleneck's health figures over the test set: for codes, the codebook usage (distinct codes used over the test set
/ K, over L K codes with L levels) and the perplexity of the test set's code histogram (K if all codes are used
equally often, 1 if only one is);
any other figure its bottleneck reports (modules.BOTTLENECKS), by name.

Rate, in bits per image: for codes (VQ, FSQ), the prior's negative log-likelihood of the test set's code
grids summed over the 49 positions (49 L codes with L levels): without the class (the prior's p(codes) = sum over c
of p(c) p(codes | c), the model its unconditional samples come from), given it, and under the class-free half that
guidance contrasts with (the "no class" token), beside the 49 L log2 K bits of uniform codes;
for a continuous bottleneck, the figure it names as its rate (the Gaussian VAE's KL(q(z|x) || N(0, I))).

Likelihood, in bits per dimension (`bits_per_dim` in --json): upper bounds on -log2 p(x) / 784 of the 8-bit test
digits, each named for what it is (vqmnist/bits_per_dim.py), with where the bits go:
- codes: the pixels given the codes, -log2 p(x | z_q(x)) / 784, plus the codes under the learned prior, without
  the class and given it, and under the uniform prior (49 L log2 K bits);
- a continuous bottleneck: the negative ELBO (its reconstruction term and its KL) and the importance-weighted bound
  with --iw-samples samples of z;
- a decoder that gives no distribution over the 256 grey levels (tanh, linear, logits): the bounds of a discretised
  logistic around its output, whose one scale is fitted on the first 1,000 of the run's validation digits, or all of
  them where it held out fewer (the count is printed, and the scale as used: held to the logistic's range).

Samples (--samples N of each kind), judged by the project's MNIST classifier (train_classifier.py):
- recognisable: the fraction classified with confidence >= 0.9;
- class entropy: entropy of the predicted classes' histogram over log 10 (1.0: every digit equally often);
- as asked: for samples of a given class (an equal share of each digit), the fraction classified as that class;
- Frechet distance between the classifier's penultimate features of the samples and of the whole test set.
Six kinds are scored:
- prior, class given: an equal share of each digit asked for (generate.py --input random);
- prior, unconditional: the prior draws each sample's class itself, then its codes (--unconditional);
- prior, no class token: the codes sampled without a class and without guidance, at the same temperature: what
  the class-free half of the prior, which guidance contrasts with, makes on its own;
- noise: the reference's noise images through the autoencoder (the baseline, --input noise);
- real: N real test digits, whose Frechet distance is the floor for that N;
- real training digits: N digits of the training set, which the test set does not hold: what a sampler that drew
  real digits would score, a floor independent of the test features, as samples are.
A continuous bottleneck has one kind of its own instead of the prior's three: latents drawn from its own prior
(the Gaussian VAE's N(0, I)) times --temperature, decoded (generate.py --input random), under "prior,
unconditional".

Every check comes before the first score: the flags together and with the model (a flag that cannot apply, such as
--temperature with --samples 0, is refused in one line), the judge, and every split the scores read (the test set,
the training set where samples or the fitted scale need it, the run's validation split). Running out of memory is one
line saying which flag to lower.
"""
import contextlib
import json
import math
import os
from dataclasses import asdict
from typing import NamedTuple

import torch
from torch import Tensor

from modules import LATENT_SIDE
from pixel_distributions import IMAGE_PIXELS, MAX_LOG_SCALE, MIN_LOG_SCALE
from prior import GUIDANCE, SAMPLING_TEMPERATURE, Truncation, encode_images, marginal_nll_bits, prior_nll_bits
from vqmnist.checkpoints.format import trained_dataset, trained_val_size
from vqmnist.checkpoints.loading import load_model
from vqmnist.configuration.cli import (ArgumentParser, add_dataset_flag, add_device_flag, add_option_flags, integer,
                                       number, refuse_inapplicable, resolve_device, run_cli)
from vqmnist.configuration.errors import UserError, out_of_memory
from vqmnist.configuration.limits import (MAX_GUIDANCE, MAX_IW_SAMPLES, MAX_SAMPLES, MAX_SCORING_BATCH, MAX_SEED,
                                          MAX_TEMPERATURE, MIN_TEMPERATURE)
from vqmnist.io.data import (KNOWN_DATASETS, TEST_FILES, TRAIN_FILES, check_default_own_folder, load_mnist,
                             split_train_validation)
from vqmnist.running.autoencoder_task import TrainingSettings
from vqmnist.scores.bits_per_dim import continuous_bounds, decoder_bits, fit_log_scale
from vqmnist.scores.reconstructions import CODE_STATISTICS, score_reconstructions
from vqmnist.scores.samples import DEFAULT_CLASSIFIER, FRECHET_MIN_SAMPLES, classify, load_classifier, score_samples

SAMPLE_KINDS = {
    "prior_conditional": "prior, class given",
    "prior_unconditional": "prior, unconditional",
    "prior_no_class": "prior, no class token",
    "noise": "noise (reference)",
    "real": "real test digits",
    "real_training": "real training digits",
}

DEFAULT_IW_SAMPLES = 4  # each sample of z is one more pass of the decoder over the test set
# The fitted scale is one number: 1,000 validation digits (784,000 pixels) pin it down, at a fifth of the cost.
FIT_IMAGES = 1000
DECODERS = {"logistic": "its own discretised logistic mixture", "categorical": "its own 256-way categorical"}
SAMPLER_FLAGS = ("temperature", "guidance", "top_k", "top_p")  # how the prior's samples are drawn


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Score a VQ-VAE checkpoint on the MNIST test set, and its prior's samples.")
    parser.add_argument("--model", default="models/vqvae/best.pt",
                        help="checkpoint written by vqvae.py (default: models/vqvae/best.pt)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_device_flag(parser)
    parser.add_argument("--data-folder", default="data", help="MNIST folder (default: data)")
    add_dataset_flag(parser)
    parser.add_argument("--batch-size", type=integer(1, MAX_SCORING_BATCH), default=1000,
                        help=f"test images per batch, at most {MAX_SCORING_BATCH:,} (default: 1000)")
    parser.add_argument("--samples", type=integer(0, MAX_SAMPLES), default=1000,
                        help="images of each kind to score; 0 skips the sample scores, and fewer than "
                             f"{FRECHET_MIN_SAMPLES} give no Frechet distance (default: 1000)")
    parser.add_argument("--iw-samples", type=integer(1, MAX_IW_SAMPLES), default=None,
                        help=f"a continuous bottleneck's samples of z for its importance-weighted bound, at most "
                             f"{MAX_IW_SAMPLES:,} (default: {DEFAULT_IW_SAMPLES})")
    parser.add_argument("--temperature", type=number(MIN_TEMPERATURE, MAX_TEMPERATURE),
                        default=SAMPLING_TEMPERATURE,
                        help="divides the prior's logits, or scales a continuous bottleneck's latents' standard "
                             f"deviation, of the samples scored; 1 changes neither (default: {SAMPLING_TEMPERATURE})")
    parser.add_argument("--guidance", type=number(0, MAX_GUIDANCE), default=GUIDANCE,
                        help=f"classifier-free guidance weight of the prior's samples (default: {GUIDANCE})")
    add_option_flags(parser, Truncation)
    parser.add_argument("--seed", type=integer(0, MAX_SEED), default=0,
                        help="seed of the samples and noise (default: 0)")
    parser.add_argument("--classifier", default=str(DEFAULT_CLASSIFIER),
                        help="classifier written by train_classifier.py (default: pretrained/mnist_classifier.pt)")
    return parser


@torch.no_grad()
def sample_scores(args, model, prior, classifier, test_images, training_images, device) -> dict:
    """The scores of each kind of sample; the prior's kinds are left out where there is no prior (None)."""
    count, frechet = args.samples, args.samples >= FRECHET_MIN_SAMPLES
    test_pixels = test_images.unsqueeze(1).to(device).float() / 255
    _, test_features = classify(classifier, test_pixels)
    generator = torch.Generator().manual_seed(args.seed)
    scores = {}
    if prior is not None:
        asked = (torch.arange(count) % 10).to(device)
        for kind, classes, guidance in (("prior_conditional", asked, args.guidance),
                                        ("prior_unconditional", prior.draw_classes(count, generator), args.guidance),
                                        ("prior_no_class", torch.full_like(asked, prior.no_class), 0.0)):
            codes = prior.sample(classes, args.temperature, guidance, generator,
                                 truncation=Truncation(args.top_k, args.top_p))
            scores[kind] = score_samples(classifier, model.to_pixels(model.decode(codes)), test_features,
                                         asked if kind == "prior_conditional" else None, frechet)
    elif not model.discrete:
        latents = model.sample_latents(count, args.temperature, generator).to(device)
        scores["prior_unconditional"] = score_samples(classifier, model.to_pixels(model.decode_latents(latents)),
                                                      test_features, None, frechet)
    noise = torch.randn(count, 1, 28, 28, generator=generator).to(device)
    scores["noise"] = score_samples(classifier, model.to_pixels(model(noise).x_recon), test_features, None, frechet)
    real = torch.randperm(len(test_images), generator=generator)[:count]
    scores["real"] = score_samples(classifier, test_pixels[real.to(device)], test_features, None, frechet)
    training = training_images[torch.randperm(len(training_images), generator=generator)[:count]]
    scores["real_training"] = score_samples(classifier, training.unsqueeze(1).to(device).float() / 255, test_features,
                                            None, frechet)
    return scores


def dataset_name(args) -> str:
    """The data set the scores are of, as a message names it: MNIST, a known data set's title, or one's own files."""
    if args.dataset == "own":
        return f"own data in {args.data_folder}"
    return KNOWN_DATASETS[args.dataset].title if args.dataset in KNOWN_DATASETS else "MNIST"


def print_reconstructions(args, report: dict, count: int) -> None:
    test_set = f"test set of {dataset_name(args)}" if args.dataset == "own" else f"{dataset_name(args)} test set"
    print(f"{args.model} (epoch {report['epoch']}, bottleneck {report['bottleneck']}), {test_set}, {count:,} images")
    print(f"  test MSE ([0,1] pixels)  {report['test_mse']:.5f}")
    print(f"  PSNR                     {report['psnr']:.2f} dB")
    print(f"  SSIM                     {report['ssim']:.4f}")
    published = report["published_protocol"]
    print(f"  PSNR, per 8-bit image    {published['psnr']:.2f} dB  (as published tables compute it)")
    print(f"  SSIM, per 8-bit image    {published['ssim']:.4f}     (as published tables compute it)")
    if "codes_used" in report["figures"]:
        levels = f", {report['code_levels']} levels of {report['num_embeddings']}" if report["code_levels"] > 1 else ""
        print(f"  codebook usage           {report['codebook_usage']:.1%} ({report['codes_used']} of "
              f"{report['num_embeddings'] * report['code_levels']} codes{levels})")
        print(f"  perplexity               {report['perplexity']:.1f}")
    for name, value in report["figures"].items():
        if name not in CODE_STATISTICS and name != report["rate_figure"]:
            print(f"  {name.replace('_', ' '):<24} {value:.4g}")
    if report["rate_figure"] is not None:
        label = f"rate ({report['rate_figure'].replace('_', ' ')})"
        print(f"  {label:<24} {report['rate_bits']:.1f} bits per image", flush=True)
        return
    if report["rate_bits"] is None:
        print(f"  rate                     (no prior; at most {report['rate_bound_bits']:.0f} bits per image, "
              f"{report['code_positions']} log2 K)", flush=True)
        return
    print(f"  rate (prior NLL)         {report['rate_bits']:.1f} bits per image, {report['rate_bits_given_class']:.1f} "
          f"given the class, {report['rate_bits_no_class_token']:.1f} by its class-free half "
          f"({report['code_positions']} log2 K = {report['rate_bound_bits']:.0f})", flush=True)


def rates(model, prior, scores, test_images, test_labels, args, device) -> dict:
    """The rate in bits per image (see the module docstring); None where a discrete model has no prior."""
    rate_figure = model.bottleneck.rate_figure
    if not model.discrete:
        return {"rate_figure": rate_figure, "rate_bits": scores.figures.get(rate_figure)}
    positions = LATENT_SIDE ** 2 * model.bottleneck.code_levels  # codes an image: 49 L
    bound = positions * math.log2(model.bottleneck.num_embeddings)
    if prior is None:
        return {"rate_figure": None, "rate_bits": None, "rate_bits_given_class": None, "rate_bits_no_class_token": None,
                "rate_bound_bits": bound, "code_positions": positions}
    codes = encode_images(model, test_images, device, args.batch_size)
    labels = test_labels.to(device)
    unconditional = marginal_nll_bits(prior, codes, args.batch_size)
    conditional = prior_nll_bits(prior, codes, labels, args.batch_size)
    class_free = prior_nll_bits(prior, codes, torch.full_like(labels, prior.no_class), args.batch_size)
    return {"rate_figure": None, "rate_bits": unconditional * positions,
            "rate_bits_given_class": conditional * positions, "rate_bits_no_class_token": class_free * positions,
            "rate_bound_bits": bound, "code_positions": positions}


def check_flags(args, model, prior) -> None:
    """Refuse, in one line each (refuse_inapplicable), the typed flags that cannot apply: those of the samples with
    --samples 0, the prior's sampler where no prior samples are drawn, --iw-samples where there is no continuous z."""
    if not args.samples:
        refuse_inapplicable(args, (*SAMPLER_FLAGS, "classifier"), "with --samples 0, which scores no samples")
        if model.discrete:
            refuse_inapplicable(args, ("seed",), f"with --samples 0 to {args.model}, whose bottleneck "
                                                 f"({model.config.bottleneck}) gives codes: nothing is drawn at random")
    bottleneck = f"{args.model}'s bottleneck ({model.config.bottleneck})"
    if not model.discrete:
        refuse_inapplicable(args, ("guidance", "top_k", "top_p"),
                            f"to {bottleneck}, which is continuous: its samples are latents from its own prior, "
                            "which knows no classes to guide to and draws no codes to truncate")
    elif prior is None:
        refuse_inapplicable(args, SAMPLER_FLAGS, f"to {args.model}, which holds no prior: no prior samples are drawn")
    if model.discrete:
        refuse_inapplicable(args, ("iw_samples",), f"to {bottleneck}, which gives codes: --iw-samples samples a "
                                                   "continuous z, and the bound of codes needs no samples")


def check_own_files(args, checkpoint: dict, train: bool) -> None:
    """With --dataset own and no --data-folder typed, refuse a default folder that lacks the test files (and the
    training files where `train`), naming the flag."""
    if args.dataset == "own":
        stored = checkpoint["args"].get("data_folder") if isinstance(checkpoint["args"], dict) else None
        check_default_own_folder(args.data_folder, "data_folder" in getattr(args, "typed", set()),
                                 (*TEST_FILES, *(TRAIN_FILES if train else ())), f"{args.model}'s digits", stored)


class Digits(NamedTuple):
    """Every split the scores read, read and checked before the first score."""

    test_images: Tensor  # (N, 28, 28) uint8
    test_labels: Tensor
    training_images: Tensor | None  # the training set, for the real training digits' scores; None if not needed
    fit_images: Tensor | None  # the validation digits the decoder's scale is fitted on; None for a likelihood decoder
    val_size: int | None  # of the run's validation split, which fit_images come first of


def read_digits(args, model, checkpoint: dict) -> Digits:
    """The test set; the training set where samples are scored or a decoder's scale is fitted; the first FIT_IMAGES
    of the run's own validation digits (the last --val-size of the training set, as vqvae.py split them), or all of
    them where it held out fewer, for that fit."""
    fit = not model.likelihood
    check_own_files(args, checkpoint, train=fit or bool(args.samples))
    test_images, test_labels = load_mnist(args.data_folder, train=False, dataset=args.dataset)
    training_images = load_mnist(args.data_folder, train=True, dataset=args.dataset)[0] \
        if fit or args.samples else None
    if not fit:
        return Digits(test_images, test_labels, training_images, None, None)
    val_size = trained_val_size(checkpoint, args.model, TrainingSettings.val_size)
    if not 0 < val_size < len(training_images):
        raise UserError(f"{args.model}'s {model.config.decoder_output} decoder gets its scale fitted on the run's "
                        f"validation digits, the last {val_size:,} of its training set (vqvae.py --val-size "
                        f"{val_size}), but the training set of {dataset_name(args)} holds {len(training_images):,}: "
                        "pass the --data-folder and --dataset it trained on")
    validation = split_train_validation(training_images, val_size)[1]
    return Digits(test_images, test_labels, training_images, validation[:FIT_IMAGES], val_size)


@contextlib.contextmanager
def memory_is_a_user_error(advice: str):
    """Within the block, running out of memory (on the GPU or the CPU) becomes one line with `advice`."""
    try:
        yield
    except (MemoryError, RuntimeError) as error:  # torch.OutOfMemoryError is a RuntimeError
        if out_of_memory(error):
            raise UserError(f"out of memory while scoring ({type(error).__name__}): {advice}") from None
        raise


def bits_per_dim(args, model, rate: dict, digits: Digits, device) -> dict:
    """The likelihood bounds and their parts in bits per dimension (see the module docstring), by name."""
    test_images = digits.test_images
    log_scale = None
    if digits.fit_images is not None:  # as used: the logistic holds its log scale to its range
        log_scale = min(max(fit_log_scale(model, digits.fit_images, args.batch_size, device), MIN_LOG_SCALE),
                        MAX_LOG_SCALE)
    report = {"decoder": model.config.decoder_output, "fitted_log_scale": log_scale,
              "fit_images": None if digits.fit_images is None else len(digits.fit_images),
              "validation_images": digits.val_size}
    if model.discrete:
        pixels = decoder_bits(model, test_images, args.batch_size, device, log_scale).mean().item()
        report["pixels_given_codes"] = pixels / IMAGE_PIXELS
        codes = {"learned_prior": rate["rate_bits"], "learned_prior_given_class": rate["rate_bits_given_class"],
                 "uniform_prior": rate["rate_bound_bits"]}
        for name, bits in codes.items():
            if bits is not None:  # the learned prior's where the checkpoint has one
                report[f"codes_{name}"] = bits / IMAGE_PIXELS
                report[name] = (pixels + bits) / IMAGE_PIXELS
        return report
    bounds = continuous_bounds(model, test_images, args.batch_size, device, args.iw_samples,
                               torch.Generator().manual_seed(args.seed), log_scale)
    return {**report, **{name: value.mean().item() / IMAGE_PIXELS for name, value in bounds._asdict().items()},
            "iw_samples": args.iw_samples}


def print_bits_per_dim(args, bits: dict) -> None:
    fitted, held_out = bits["fit_images"], bits["validation_images"]
    decoder = DECODERS.get(bits["decoder"]) or (
        f"a discretised logistic of scale exp({bits['fitted_log_scale']:.3f}) around its {bits['decoder']} output, "
        f"fitted on " + (f"all {fitted:,} of the run's validation digits" if fitted == held_out
                         else f"the first {fitted:,} of the run's {held_out:,} validation digits"))
    print(f"  likelihood, bits/dim (upper bounds on -log2 p(x) / 784 of the 8-bit digits; decoder: {decoder})")
    if "pixels_given_codes" in bits:
        print(f"    pixels given the codes   {bits['pixels_given_codes']:.4f}")
        for name, label in (("learned_prior", "learned prior"), ("learned_prior_given_class", "given the class"),
                            ("uniform_prior", "uniform prior")):
            if name in bits:
                print(f"    + codes, {label:<15} {bits['codes_' + name]:.4f}  = {bits[name]:.4f}")
        return
    print(f"    negative ELBO            {bits['negative_elbo']:.4f}  (reconstruction {bits['reconstruction']:.4f} + "
          f"KL {bits['kl']:.4f})")
    print(f"    importance-weighted      {bits['importance_weighted']:.4f}  ({bits['iw_samples']} samples of z)",
          flush=True)


def print_samples(args, samples: dict, discrete: bool, default_judge: bool) -> None:
    truncation = Truncation(args.top_k, args.top_p).describe()
    sampled = (f"prior temperature {args.temperature}, guidance {args.guidance}{truncation}"
               if "prior_conditional" in samples
               else f"latents from the bottleneck's prior x temperature {args.temperature}")
    print(f"samples: {args.samples} of each kind, {sampled}, seed {args.seed}, judged by "
          f"{os.path.relpath(args.classifier)}")
    if args.dataset != "mnist" and default_judge:
        print(f"  (the judge classifies MNIST digits: on {dataset_name(args)}, its recognisable and as-asked figures "
              "say little; the Frechet distance to the real test images and their floor still compare)")
    print(f"  {'':<20}  recognisable  class entropy  as asked  Frechet distance")
    absent = ("the checkpoint has no prior" if discrete
              else "none: a continuous bottleneck's prior knows no classes")
    for kind, label in SAMPLE_KINDS.items():
        if kind not in samples:
            print(f"  {label:<20}  ({absent})")
            continue
        row = samples[kind]
        asked = f"{row['matches_class']:.1%}" if "matches_class" in row else "-"
        distance = "-" if row["frechet_distance"] is None else f"{row['frechet_distance']:.2f}"
        floor = {"real": "  (the floor)", "real_training": "  (the floor, digits not in the test set)"}.get(kind, "")
        print(f"  {label:<20}  {row['recognisable']:>12.1%}  {row['class_entropy']:>13.3f}  {asked:>8}  "
              f"{distance:>16}{floor}")
    if args.samples < FRECHET_MIN_SAMPLES:
        print(f"  (no Frechet distance for fewer than {FRECHET_MIN_SAMPLES} samples: their features' covariance "
              "cannot have full rank)")


def main(args) -> None:
    # Every check first: the flags, the judge, the data; then the scores, none of which can be refused.
    device = resolve_device(args.device)
    model, prior, checkpoint, _ = load_model(args.model, device)
    check_flags(args, model, prior)
    args.iw_samples = args.iw_samples or DEFAULT_IW_SAMPLES
    args.dataset = args.dataset or trained_dataset(checkpoint, args.model)
    # The judge is read before anything is scored: a bad --classifier costs no work.
    classifier = load_classifier(args.classifier, device) if args.samples else None
    default_judge = bool(args.samples) and DEFAULT_CLASSIFIER.is_file() and \
        os.path.samefile(args.classifier, DEFAULT_CLASSIFIER)
    digits = read_digits(args, model, checkpoint)
    test_images, test_labels, training_images = digits.test_images, digits.test_labels, digits.training_images
    if args.samples and args.samples > min(len(test_images), len(training_images)):
        raise UserError(f"--samples {args.samples} is more than the {len(test_images)} test digits it is compared "
                        f"with, or the {len(training_images)} training digits scored beside them")
    smaller_batch = (f"pass a smaller --batch-size than {args.batch_size:,}" if args.batch_size > 1
                     else "free memory" + (", or use --device cpu" if device.type == "cuda" else ""))
    with memory_is_a_user_error(smaller_batch):
        scores = score_reconstructions(model, test_images, args.batch_size, device, per_image_8bit=True)
        rate = rates(model, prior, scores, test_images, test_labels, args, device)
    if not all(math.isfinite(value) for value in (scores.mse, scores.psnr, *scores.figures.values())):
        raise UserError(f"{args.model} reconstructs the test set with non-finite scores (MSE {scores.mse}, PSNR "
                        f"{scores.psnr}): its model is broken; use another checkpoint")
    report = {
        "bottleneck": model.config.bottleneck,
        "dataset": args.dataset,
        "test_mse": scores.mse,
        "psnr": scores.psnr,
        "ssim": scores.ssim,
        # As published MNIST tables compute them (CVQ-VAE, ArcVQ-VAE): per 8-bit image, then averaged.
        "published_protocol": {"psnr": scores.per_image_8bit["psnr"], "ssim": scores.per_image_8bit["ssim"]},
        # The bottleneck's health figures by name, also each at the top level.
        "figures": scores.figures,
        **scores.figures,
        "num_embeddings": model.bottleneck.num_embeddings if model.discrete else None,
        "code_levels": model.bottleneck.code_levels if model.discrete else None,
        "epoch": checkpoint["epoch"],
        **rate,
        "config": asdict(model.config),
    }
    if not args.json:  # printed before the samples are scored, so that nothing computed is lost
        print_reconstructions(args, report, len(test_images))
    with memory_is_a_user_error(smaller_batch):
        report["bits_per_dim"] = bits_per_dim(args, model, report, digits, device)
    if not args.json:
        print_bits_per_dim(args, report["bits_per_dim"])
    if args.samples:
        # Each kind's samples are drawn, decoded and judged at once: their count, not --batch-size, is the batch.
        with memory_is_a_user_error(f"pass fewer --samples than {args.samples:,}, which are drawn and decoded at once"):
            sampled = sample_scores(args, model, prior, classifier, test_images, training_images, device)
        report["samples"] = {"count": args.samples, "temperature": args.temperature, "guidance": args.guidance,
                             "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed, **sampled}
        if not args.json:
            print_samples(args, report["samples"], model.discrete, default_judge)
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    run_cli(main, build_parser().parse_args())
