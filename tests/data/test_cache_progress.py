"""The caching bar: its ETA is of the pass's steady pace, not of its slow start; and off a
terminal (a log file) it is one plain line, not a carriage return per refresh."""

from __future__ import annotations

import re
import sys
import time

import tqdm.std

from saelab.data.cache_build import CacheBuilder, LMSource

from .conftest import model_config

START_UP = 100  # seconds the first LM batch takes (a cold start: reading, warm-up)
PER_BATCH = 1  # seconds each later batch takes
CLOCK = r"((?:\d+:)?\d+:\d\d)"
CLOCKS = re.compile(rf"\[{CLOCK}<{CLOCK},")  # [elapsed<ETA, ...


def _seconds(clock: str) -> int:
    seconds = 0
    for part in clock.split(":"):
        seconds = 60 * seconds + int(part)
    return seconds


def _build(lm, corpus_cfg, root, n_tokens=1200):
    source = LMSource(model=model_config(), corpus=corpus_cfg, device="cpu", lm_batch_size=4)
    builder = CacheBuilder(source, root, lm=lm)
    return builder.ensure([source.spec("train", "resid", 1, n_tokens, shard_tokens=512)])[0]


def _timed_forwards(model, monkeypatch):
    """The bars' clock advanced only by the LM's forward passes (a real hook on the real
    model): START_UP seconds for the first, PER_BATCH for each later one, whatever else runs on
    the machine. It starts at the real time, which tqdm's monitor thread compares it with."""
    now, calls = [time.time()], []

    def forward(*_):
        now[0] += START_UP if not calls else PER_BATCH
        calls.append(1)

    monkeypatch.setattr(tqdm.std, "time", lambda: now[0])
    return model.register_forward_pre_hook(forward)


def test_the_caching_eta_leaves_the_slow_first_batch_out(
    tiny_lm, text_corpus, tmp_path, capsys, monkeypatch
):
    """Every ETA shown foresees the end the pass really had. Timed from the start, the first
    batch's seconds read as the pace of the whole pass: an ETA of ~9 x START_UP (15 minutes)
    where the rest takes ~9 x PER_BATCH."""
    for stream in (sys.stdout, sys.stderr):  # a terminal, where the bar is drawn
        monkeypatch.setattr(stream, "isatty", lambda: True)
    hook = _timed_forwards(tiny_lm[0], monkeypatch)
    try:
        cache = _build(tiny_lm, text_corpus, tmp_path)
    finally:
        hook.remove()
    frames = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()
    clocks = [CLOCKS.search(line) for line in frames]
    timed = [(_seconds(c[1]), _seconds(c[2])) for c in clocks if c]  # (elapsed, ETA)
    end = timed[-1][0]
    assert len(cache) == 1200 and "100%" in frames[-1]
    assert end >= START_UP, frames  # the elapsed time still holds the start-up
    assert len(timed) >= 5, frames  # refreshes mid-pass, and the end
    for elapsed, eta in timed:
        assert elapsed + eta <= end + 2 * PER_BATCH, frames


def test_off_a_terminal_the_caching_progress_is_one_plain_line(
    tiny_lm, text_corpus, tmp_path, capfd
):
    _build(tiny_lm, text_corpus, tmp_path, n_tokens=500)
    out, err = capfd.readouterr()
    assert "\r" not in out + err and "%|" not in err
    assert out.strip().splitlines() == ["caching resid@1 (train): 500 tokens"]
