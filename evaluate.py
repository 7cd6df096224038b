"""Score a trained VQ-VAE on the whole MNIST test set (10,000 digits).

Usage:
    python evaluate.py --model models/vqvae/best.pt
    python evaluate.py --model models/vqvae/best.pt --json          # one JSON object, for scripts

Reports the reconstruction MSE in [0, 1] pixel space (averaged over every pixel of the test set), the PSNR
10 log10(1 / MSE) in dB, the codebook usage (distinct codes used over the test set / K) and the perplexity of
the test set's code histogram (K if all codes are used equally often, 1 if only one is).
"""
import json

from utils import ArgumentParser, load_mnist, load_model, positive_int, resolve_device, run_cli, score_reconstructions


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(description="Score a VQ-VAE checkpoint on the MNIST test set.")
    parser.add_argument("--model", default="models/vqvae/best.pt",
                        help="checkpoint written by vqvae.py (default: models/vqvae/best.pt)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="device to run on (default: cpu)")
    parser.add_argument("--data-folder", default="data", help="MNIST folder (default: data)")
    parser.add_argument("--batch-size", type=positive_int, default=1000, help="test images per batch (default: 1000)")
    return parser


def main(args) -> None:
    device = resolve_device(args.device)
    model, checkpoint = load_model(args.model, device)
    test_images, _ = load_mnist(args.data_folder, train=False)
    scores = score_reconstructions(model, test_images, args.batch_size, device)
    report = {
        "test_mse": scores.mse,
        "psnr": scores.psnr,
        "codebook_usage": scores.codebook_usage,
        "perplexity": scores.perplexity,
        "codes_used": scores.codes_used,
        "num_embeddings": model.config.num_embeddings,
        "epoch": checkpoint["epoch"],
    }
    if args.json:
        print(json.dumps(report))
        return
    print(f"{args.model} (epoch {report['epoch']}), MNIST test set, {len(test_images):,} images")
    print(f"  test MSE ([0,1] pixels)  {scores.mse:.5f}")
    print(f"  PSNR                     {scores.psnr:.2f} dB")
    print(f"  codebook usage           {scores.codebook_usage:.1%} ({scores.codes_used} of "
          f"{model.config.num_embeddings} codes)")
    print(f"  perplexity               {scores.perplexity:.1f}")


if __name__ == "__main__":
    run_cli(main, build_parser().parse_args())
