"""The installed commands beside `shrink fit`: export, benchmark, prune-vocab, classify."""
