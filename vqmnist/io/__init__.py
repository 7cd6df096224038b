"""Files in and out: the data sets' digits, code-grid files, and files written whole or not at all."""
