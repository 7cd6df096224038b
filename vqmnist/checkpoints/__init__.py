"""Checkpoints: what each kind holds (its format), the checks of everything read from one, and a model loaded from
one."""
