"""``python -m fastmuon demo``: a small character-level transformer trained on the Python
standard library's own sources, in PyTorch and MLX, with AdamW, Muon and NorMuon (Muon+AdamW
routing), the same step budget each, each at its best learning rate from bench/sweep_lr.py."""
