"""speaker-neurons: find the FFN neurons of self-supervised speech Transformers that carry speaker
information, without labels, and prune the models while protecting them.

All algorithms live in this package; it knows nothing of Snakemake.
"""

__version__ = "0.1.0"
