"""Muon options every framework's optimizers must reject in the constructor, with the word the
ValueError must contain. The learning rate and the dtype differ by framework and are listed in
each framework's tests."""

BAD_MUON_OPTIONS = [
    (dict(momentum=1.0), "momentum"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(method="svd"), "method"),
    (dict(ns_steps=0), "steps"),
    (dict(adjust_lr="spectral"), "adjust_lr"),
    (dict(backend="cuda"), "backend"),
]
