"""How a script is told what to do: the shared command line, vqvae.py's flags and their checks, the limits a
flag or a file may ask for, and the one-line errors."""
