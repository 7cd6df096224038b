"""Running a training: the one loop and its two tasks (the autoencoder's and the prior's), stops, processes, the
machine's threads, and the run's folders and logs."""
