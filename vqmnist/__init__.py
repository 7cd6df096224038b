"""The library beneath the project's scripts: data, bottlenecks, prior, the training loop, checkpoints and scores."""
