"""Training: the dataset (splits, decoding, unreadable files), the one fit loop, and DDP."""
