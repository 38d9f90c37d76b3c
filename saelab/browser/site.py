"""Write the browser: a static folder that opens from file:// with no server and no network.

    index.html, browser.js, browser.css        the page (copied from saelab/browser/static/)
    data/meta.js                               run, model, site, tokens scanned, eval numbers, links
    data/latents.js                            one row per latent for the table (loaded up front)
    data/chunk_NNNN.js                         histograms, contexts, output tokens of CHUNK latents
    data/search.js                             activating token -> latents (loaded on first search)

Browsers refuse fetch() of file:// URLs, so every data file is a script that assigns JSON to a
global, loaded with a <script> tag. Only meta.js and latents.js load with the page, which keeps
the index fast for 16k+ latents; a latent's chunk loads when its panel opens.

The folder is written under a temporary name beside the destination and renamed into place, so
a reader never sees half a browser, and a failed run leaves the previous one intact.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import numpy as np

from saelab.browser.scan import BINS_PER_DECADE, HIST_LOG10_MIN, PAD_ID, ScanResult

STATIC = Path(__file__).resolve().parent / "static"
STATIC_FILES = ("index.html", "browser.js", "browser.css")
CHUNK = 256  # latents per data file: ~1 MB for 20 contexts of 21 tokens each
HIGH_FREQUENCY = 0.10  # the paper's "high-frequency latent" (docs/maths.md §6)


def _sig(values, digits: int = 4):
    """A number or list of numbers rounded to ``digits`` significant digits, zeros as int 0:
    keeps the files small."""
    if isinstance(values, (int, float)):
        return 0 if values == 0 else float(f"{values:.{digits}g}")
    if not isinstance(values, list):
        values = np.asarray(values, dtype=np.float64).reshape(-1).tolist()
    return [0 if v == 0 else float(f"{v:.{digits}g}") for v in values]


def _script(path: Path, target: str, data, preamble: str = "") -> int:
    """Write ``<preamble>\n<target> = <json>;`` (the JSON alone on the last line) and return the
    bytes written. ensure_ascii escapes every non-ASCII character (including U+2028, which
    would end a JS string early)."""
    text = preamble + f"{target} = {json.dumps(data, separators=(',', ':'), ensure_ascii=True)};\n"
    path.write_text(text, encoding="ascii")
    return len(text)


class TokenNames:
    """Token id -> display string, decoded once per id and collected into small per-file
    vocabularies (contexts store indices into them, not repeated strings)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.special = {
            i: t for i, t in zip(tokenizer.all_special_ids, tokenizer.all_special_tokens)
        }
        self.cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        if token_id not in self.cache:
            if token_id in self.special:
                self.cache[token_id] = self.special[token_id]
            else:
                self.cache[token_id] = self.tokenizer.decode(
                    [token_id], clean_up_tokenization_spaces=False
                )
        return self.cache[token_id]


class LocalVocab:
    def __init__(self, names: TokenNames):
        self.names, self.index, self.strings = names, {}, []

    def __call__(self, token_id: int) -> int:
        if token_id not in self.index:
            self.index[token_id] = len(self.strings)
            self.strings.append(self.names(token_id))
        return self.index[token_id]


def _chunk_records(
    scan: ScanResult, start: int, end: int, names: TokenNames, logits
) -> tuple[list[dict], list[str]]:
    """The panel data of latents [start, end) and the chunk's vocabulary. Token ids are mapped
    to the chunk vocabulary and windows trimmed with numpy, and tensors become Python lists
    once per chunk: per-element work in Python made a 16k-latent SAE take a minute here."""
    ids = scan.window_ids[start:end].numpy()  # [n, k, w]
    valid = ids != PAD_ID
    logit_ids = [t[start:end].numpy() for t in logits[::2]] if logits is not None else []
    uniq = np.unique(np.concatenate([ids[valid], *(t.ravel() for t in logit_ids)]))
    vocab = [names(int(t)) for t in uniq]
    local = np.searchsorted(uniq, np.where(valid, ids, uniq[0] if len(uniq) else 0)).tolist()
    w = ids.shape[2]
    lo = valid.argmax(-1).tolist()
    hi = (w - valid[..., ::-1].argmax(-1)).tolist()
    values = [_sig(v) for v in scan.top_values[start:end].tolist()]
    positions = scan.top_positions[start:end].tolist()
    acts = scan.window_acts[start:end].tolist()
    hist = scan.hist[start:end].numpy()
    if logits is not None:
        up, down = (np.searchsorted(uniq, t).tolist() for t in logit_ids)
        up_v, down_v = (t[start:end].tolist() for t in logits[1::2])
    records = []
    for k in range(end - start):
        nz = np.flatnonzero(hist[k])
        h = [int(nz[0]), hist[k, nz[0] : nz[-1] + 1].tolist()] if len(nz) else [0, []]
        contexts = []
        for j, pos in enumerate(positions[k]):
            if pos < 0:  # slots are sorted: the rest are empty too
                break
            a, b = lo[k][j], hi[k][j]
            contexts.append(
                [values[k][j], (w - 1) // 2 - a, local[k][j][a:b], _sig(acts[k][j][a:b], 3)]
            )
        rec = {"h": h, "c": contexts}
        if logits is not None:
            rec["p"] = [list(pair) for pair in zip(up[k], _sig(up_v[k], 3))]
            rec["s"] = [list(pair) for pair in zip(down[k], _sig(down_v[k], 3))]
        records.append(rec)
    return records, vocab


def _write_chunks(
    data: Path, scan: ScanResult, names: TokenNames, logits, chunk: int
) -> tuple[int, dict]:
    """Chunk files, plus the search index (activating token string -> latents, by count)."""
    d_sae = scan.fires.shape[0]
    search: dict[str, Counter] = {}
    for c, start in enumerate(range(0, d_sae, chunk)):
        records, vocab = _chunk_records(scan, start, min(start + chunk, d_sae), names, logits)
        for i, rec in zip(range(start, start + chunk), records):
            for ctx in rec["c"]:
                search.setdefault(vocab[ctx[2][ctx[1]]], Counter())[i] += 1
        _script(
            data / f"chunk_{c:04d}.js",
            f"window.SAELAB_CHUNKS[{c}]",
            {"start": start, "vocab": vocab, "latents": records},
            preamble="window.SAELAB_CHUNKS = window.SAELAB_CHUNKS || {};\n",
        )
    n_chunks = (d_sae + chunk - 1) // chunk
    # Latents ordered by how many of their top contexts sit on the token, most first.
    index = {tok: [i for i, _ in cnt.most_common()] for tok, cnt in search.items()}
    return n_chunks, index


def _table(scan: ScanResult, names: TokenNames) -> dict:
    vocab = LocalVocab(names)
    w = scan.window_ids.shape[2]
    centres = scan.window_ids[:, 0, (w - 1) // 2].tolist()
    top = [vocab(t) if p >= 0 else -1 for t, p in zip(centres, scan.top_positions[:, 0].tolist())]
    mean = scan.act_sum / scan.fires.clamp_min(1)
    return {
        "density": _sig(scan.density),
        "max": _sig(scan.max_act),
        "mean": _sig(mean),
        "top": top,
        "vocab": vocab.strings,
    }


def _href(target: Path, out: Path) -> str:
    """A relative link from the final folder, so the folder and its run move together."""
    return quote(Path(os.path.relpath(Path(target).resolve(), out.resolve())).as_posix())


def check_out(out: Path) -> Path:
    """Refuse to replace a folder that is not a browser (called before the scan, too, so a
    wrong --out fails before minutes of work)."""
    out = Path(out)
    if out.exists() and not (out / "data" / "meta.js").is_file():
        raise FileExistsError(
            f"{out} exists and is not a saelab browser folder; pick another --out"
        )
    return out


def write_site(
    out: Path,
    scan: ScanResult,
    tokenizer,
    meta: dict,
    logits=None,
    links: list[tuple[str, Path]] = (),
    chunk_size: int = CHUNK,
) -> dict:
    """Write the browser folder ``out`` atomically; returns the meta written (with sizes).

    ``meta`` holds what the page shows in its header (model, site, layer, sae, eval numbers);
    ``logits`` is ``direction_logits``'s tuple or None; ``links`` are (label, file) pairs;
    ``chunk_size`` latents go in each data file.
    """
    out = check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "data").mkdir(parents=True)
    try:
        for name in STATIC_FILES:
            shutil.copyfile(STATIC / name, tmp / name)
        names = TokenNames(tokenizer)
        n_chunks, search = _write_chunks(tmp / "data", scan, names, logits, chunk_size)
        density = scan.density
        meta = {
            **meta,
            "tokens": scan.tokens,
            "contexts": scan.contexts,
            "context_length": scan.context_length,
            "d_sae": int(scan.fires.shape[0]),
            "top_k": int(scan.top_values.shape[1]),
            "window": int(scan.window_ids.shape[2]),
            "chunk_size": chunk_size,
            "n_chunks": n_chunks,
            "hist": {"log10_min": HIST_LOG10_MIN, "bins_per_decade": BINS_PER_DECADE},
            "high_frequency": HIGH_FREQUENCY,
            "summary": {
                "dead": int((scan.fires == 0).sum()),
                "dense_1pct": int((density > 0.01).sum()),
                "dense_10pct": int((density > HIGH_FREQUENCY).sum()),
            },
            "logits": logits is not None,
            "links": [{"label": label, "href": _href(path, out)} for label, path in links],
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        sizes = {
            "latents": _script(
                tmp / "data" / "latents.js", "window.SAELAB_LATENTS", _table(scan, names)
            ),
            "search": _script(tmp / "data" / "search.js", "window.SAELAB_SEARCH", search),
        }
        sizes["meta"] = _script(tmp / "data" / "meta.js", "window.SAELAB_META", meta)
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**meta, "sizes": sizes}


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an old browser there is moved aside first and then deleted
    (a directory cannot be atomically replaced by rename, so the gap is one rename long)."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.rename(out, old)
    os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
