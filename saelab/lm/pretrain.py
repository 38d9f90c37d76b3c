"""Pretrain `tiny-gemma-2` from scratch on the Python standard library, reproducibly.

One command rebuilds the shipped model (tokenizer, weights, report):

    python -m saelab.lm.pretrain --out saelab/lm/assets/tiny-gemma-2 --seed 0

The same machinery builds saelab's second test-bed LM, `tiny-llama` (Llama layout, English
prose from Debian packages; saelab/lm/tiny_llama.py, saelab/lm/prose.py), not shipped:

    python -m saelab.lm.pretrain --arch llama --corpus english-prose --precision 32-true \
        --tokens 3000000 --out ~/.cache/saelab/models/tiny-llama --seed 0

Steps: train the BPE tokenizer on the train split -> pack the train split into <bos>-led
rows -> train with Lightning (AdamW, warm-up + cosine, bf16 autocast) -> save bf16
safetensors -> reload the SAVED folder through `load_model` and score it on the validation
split next to unigram and bigram baselines fitted on the train split -> print a table and
write pretrain_report.json. Runs single-threaded on purpose (a shared 2-core machine); the
defaults take about half an hour on one modern CPU core.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
import transformers
from torch.utils.data import DataLoader, TensorDataset

from saelab.lm import corpus, heldout, prose
from saelab.lm.load import load_model
from saelab.lm.tiny_gemma import build_tiny_gemma2
from saelab.lm.tiny_llama import build_tiny_llama
from saelab.lm.tokenizer import VOCAB_SIZE, save_hf_tokenizer, train_tokenizer

# --arch: the model builder (each takes vocab size and the pad, bos and eos ids) and its name.
ARCHS = {"gemma2": (build_tiny_gemma2, "tiny-gemma-2"), "llama": (build_tiny_llama, "tiny-llama")}
# --corpus names besides any saelab.lm.corpus source (a .txt/.jsonl file or folder).
ENGLISH_PROSE = "english-prose"


def corpus_source(name: str) -> str:
    """A saelab.lm.corpus source for --corpus: "english-prose" is built (once) from Debian
    packages into its cache folder; anything else is passed through."""
    return str(prose.ensure()) if name == ENGLISH_PROSE else name


class CausalLMPretraining(pl.LightningModule):
    """Next-token cross-entropy on packed rows; owns only the optimiser and its schedule."""

    def __init__(
        self,
        model,
        lr: float,
        weight_decay: float,
        warmup_steps: int,
        total_steps: int,
        min_lr_ratio: float = 0.1,
    ):
        super().__init__()
        self.model = model
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.min_lr_ratio = min_lr_ratio

    def training_step(self, batch, batch_idx):
        (x,) = batch
        # labels == inputs: transformers shifts them; the <bos> at position 0 is never a target.
        loss = self.model(input_ids=x, labels=x).loss
        self.log("train_loss", loss, prog_bar=True, on_step=True)
        return loss

    def _lr_factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        t = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    def configure_optimizers(self):
        # No weight decay on 1-d parameters (the norm gains): with Gemma's (1 + weight) RMSNorm
        # decay would pull every gain towards 1, undoing the depth-scaled post-norm init.
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": self.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        opt = torch.optim.AdamW(groups, lr=self.lr, betas=(0.9, 0.95), eps=1e-8)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self._lr_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class LossHistory(pl.Callback):
    """Keeps every step's training loss (for the report's smoothed final train loss)."""

    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (HF format)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--tokens",
        type=int,
        default=1_800_000,
        help="training token budget (rows x context); sets the number of steps",
    )
    p.add_argument("--context", type=int, default=256, help="pretraining row length")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=4e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--arch", choices=sorted(ARCHS), default="gemma2", help="model layout")
    p.add_argument(
        "--corpus",
        default=corpus.STDLIB,
        help=f"text: {corpus.STDLIB!r}, {ENGLISH_PROSE!r} (Debian packages, saelab/lm/prose.py) "
        "or a .txt/.jsonl file or folder",
    )
    p.add_argument(
        "--precision",
        default="bf16-mixed",
        help="Lightning precision of the training steps (32-true is faster on some CPUs)",
    )
    return p.parse_args(argv)


def prepare_data(args, out: Path):
    """Tokenizer trained and saved; train/validation packed into <bos>-led rows."""
    source = corpus_source(args.corpus)
    train_docs = list(corpus.iter_documents(source, "train"))
    val_docs = list(corpus.iter_documents(source, "validation"))
    tok = train_tokenizer(train_docs, VOCAB_SIZE)
    save_hf_tokenizer(tok, out, model_max_length=1024)
    ids = {t: tok.token_to_id(t) for t in ("<pad>", "<bos>", "<eos>")}
    train, val = (
        heldout.pack(heldout.encode_stream(tok, docs, ids["<eos>"]), args.context, ids["<bos>"])
        for docs in (train_docs, val_docs)
    )
    print(
        f"corpus: {len(train_docs)} train / {len(val_docs)} validation documents; "
        f"{train.size:,} / {val.size:,} tokens packed"
    )
    return tok, ids, train, val


def train(args, tok, ids, train_rows: np.ndarray):
    builder, _ = ARCHS[args.arch]
    model = builder(tok.get_vocab_size(), ids["<pad>"], ids["<bos>"], ids["<eos>"])
    steps = max(1, args.tokens // (args.batch_size * args.context))
    lit = CausalLMPretraining(model, args.lr, args.weight_decay, args.warmup_steps, steps)
    loader = DataLoader(
        TensorDataset(torch.from_numpy(train_rows)),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    history = LossHistory()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision=args.precision,
        max_steps=steps,
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        callbacks=[history, pl.callbacks.TQDMProgressBar(refresh_rate=10)],
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    start = time.time()
    trainer.fit(lit, loader)
    seconds = time.time() - start
    return model, history.losses, steps, seconds


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pl.seed_everything(args.seed, workers=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    tok, ids, train_rows, val_rows = prepare_data(args, out)
    model, losses, steps, seconds = train(args, tok, ids, train_rows)
    # bf16 on disk halves the package size; the report scores the saved weights, reloaded.
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    shipped = load_model(out, dtype="float32")

    vocab = tok.get_vocab_size()
    tokens_seen = steps * args.batch_size * args.context
    tail = losses[-max(1, len(losses) // 20) :]  # mean of the last 5% of steps: less noisy
    bigram, alpha = heldout.bigram_nll(train_rows, val_rows, vocab)
    report = {
        "command": "python -m saelab.lm.pretrain "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "tokens_seen": tokens_seen,
        "steps": steps,
        "train_loss": float(np.mean(tail)),
        "heldout_loss": heldout.model_nll(shipped, val_rows),
        "unigram_heldout_loss": heldout.unigram_nll(train_rows, val_rows, vocab),
        "bigram_heldout_loss": bigram,
        "bigram_alpha": alpha,
        "heldout_tokens": int(val_rows[:, 1:].size),
        "train_tokens_available": int(train_rows.size),
        "parameters": sum(p.numel() for p in shipped.parameters()),
        "train_seconds": round(seconds, 1),
        "tokens_per_second": round(tokens_seen / seconds, 1),
        "model_name": ARCHS[args.arch][1],
        "corpus_fingerprint": corpus.fingerprint(corpus_source(args.corpus)),
        "args": vars(args),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "lightning": pl.__version__,
        },
    }
    (out / "pretrain_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    return report


TINY_LLAMA_DIR = Path("~/.cache/saelab/models/tiny-llama")
TINY_LLAMA_ARGS = [
    "--arch",
    "llama",
    "--corpus",
    ENGLISH_PROSE,
    "--precision",
    "32-true",
    "--tokens",
    "3000000",
    "--seed",
    "0",
]


def ensure_tiny_llama(out: str | Path = TINY_LLAMA_DIR) -> Path:
    """The tiny-llama folder, pretrained first (about 45 minutes on a free core) if it is missing
    or was built with other arguments than ``TINY_LLAMA_ARGS`` (its report says which). Built in
    ``<out>.partial`` and renamed when complete, so a stopped build never looks done."""
    out = Path(out).expanduser()
    if _built_as_asked(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # One builder at a time: a second process waits on the lock, then finds the model built.
    with open(out.with_name(out.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _built_as_asked(out):
            partial = out.with_name(out.name + ".partial")
            main([*TINY_LLAMA_ARGS, "--out", str(partial)])
            if out.exists():  # a build with other arguments: replaced only once this one is done
                stale = out.with_name(out.name + ".stale")
                shutil.rmtree(stale, ignore_errors=True)
                out.rename(stale)
                shutil.rmtree(stale)
            partial.rename(out)
    return out


def _built_as_asked(out: Path) -> bool:
    """Whether ``out`` holds a finished build whose report has TINY_LLAMA_ARGS' arguments."""
    report = out / "pretrain_report.json"
    if not report.is_file():
        return False
    built = json.loads(report.read_text()).get("args", {})
    asked = vars(parse_args([*TINY_LLAMA_ARGS, "--out", str(out)]))
    return all(built.get(k) == v for k, v in asked.items() if k != "out")


def format_table(r: dict) -> str:
    rows = [
        ("tokens seen", f"{r['tokens_seen']:,}"),
        ("train loss (last 5% of steps)", f"{r['train_loss']:.3f}"),
        (f"held-out loss, {r.get('model_name', 'tiny-gemma-2')}", f"{r['heldout_loss']:.3f}"),
        ("held-out loss, unigram (add-1)", f"{r['unigram_heldout_loss']:.3f}"),
        (f"held-out loss, bigram (alpha={r['bigram_alpha']:g})", f"{r['bigram_heldout_loss']:.3f}"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{'':{width}}  value (losses in nats/token)", *(f"{k:{width}}  {v}" for k, v in rows)]
    lines.append(f"(held-out: {r['heldout_tokens']:,} tokens of the validation split)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
