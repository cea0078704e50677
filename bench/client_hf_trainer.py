"""Hugging Face transformers' Trainer as a client of fastmuon.torch.MuonWithAdamW (Muon and
NorMuon) on a tiny GPT-2, whose HF Conv1D weights are routed by muon_param_groups: train 8
steps under Trainer's cosine schedule; then train 4 of those 8, checkpoint, and resume to 8.
The resumed weights must equal the uninterrupted run's bitwise; exits 1 otherwise.

transformers and accelerate are not dependencies of fastmuon; install them beside it in a
separate environment (``pip install transformers accelerate``), then

    python bench/client_hf_trainer.py
"""

import os
import sys
import tempfile

import torch
from torch.utils.data import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

from fastmuon.torch import MuonWithAdamW, muon_param_groups

STEPS = 8


class RandomTokens(Dataset):
    def __init__(self, n: int = 64, length: int = 32, vocab: int = 128):
        self.tokens = torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, i):
        return {"input_ids": self.tokens[i], "labels": self.tokens[i]}


class StopAt(TrainerCallback):
    """Stop (and checkpoint) after ``step`` steps, with the schedule still that of STEPS."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
            control.should_save = True


def train(out: str, *, beta2=None, stop=None, resume=False):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_positions=32, n_embd=64, n_layer=2, n_head=2))
    optimizer = MuonWithAdamW(muon_param_groups(model), lr=0.02, adamw_lr=3e-3,
                              **({} if beta2 is None else {"beta2": beta2}))
    args = TrainingArguments(output_dir=out, max_steps=STEPS, per_device_train_batch_size=8, logging_steps=2,
                             save_steps=STEPS, report_to=[], use_cpu=True, lr_scheduler_type="cosine",
                             warmup_steps=2, seed=0, data_seed=0, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=RandomTokens(), optimizers=(optimizer, None),
                      callbacks=[StopAt(stop)] if stop else None)
    trainer.train(resume_from_checkpoint=resume or None)
    return model, [h["loss"] for h in trainer.state.log_history if "loss" in h]


def main() -> int:
    failed = False
    with tempfile.TemporaryDirectory(prefix="fastmuon_hf_") as root:
        for name, beta2 in (("Muon", None), ("NorMuon", 0.95)):
            whole, losses = train(os.path.join(root, f"{name}-whole"), beta2=beta2)
            train(os.path.join(root, f"{name}-parts"), beta2=beta2, stop=STEPS // 2)
            resumed, _ = train(os.path.join(root, f"{name}-parts"), beta2=beta2, resume=True)
            diff = max((a - b).abs().max().item() for a, b in zip(whole.parameters(), resumed.parameters()))
            print(f"{name} (+AdamW): losses {[round(x, 4) for x in losses]}; resumed vs uninterrupted weights: "
                  f"max |difference| {diff:.3g}")
            failed |= diff != 0.0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
