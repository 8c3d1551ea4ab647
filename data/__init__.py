"""Training data: a small sample file and a generator for any size."""
