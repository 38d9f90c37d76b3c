"""The browser folder: written atomically from a real run folder, self-contained, and rendered
by a real headless Chromium from file:// (table of latents, a shaded latent panel, search)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from saelab.browser import build_browser, resolve_target
from tests.browser.conftest import ARTIFACTS, detector_sae, make_run

# Latent j fires on WORDS[j] (all of them occur in the first 1,500 validation tokens); all but
# the first need HTML escaping.
WORDS = [" self", " <", ' """', '("', " &"]
D_SAE, CHUNK = 40, 16
EVAL = {"tokens": 4096, "l0": 12.5, "fvu": 0.25, "delta_lm_loss": 0.031, "ce_loss_recovered": 0.97}


def read_data(path: Path):
    """The JSON a data script assigns: its last line is ``<target> = <json>;``."""
    last = path.read_text().rstrip().splitlines()[-1]
    return json.loads(last[last.index(" = ") + 3 : -1])


@pytest.fixture(scope="module")
def browser(lm, tmp_path_factory):
    model, tok = lm
    sweep = tmp_path_factory.mktemp("sweep")
    (sweep / "pareto_delta_lm_loss.png").write_bytes(
        b"\x89PNG"
    )  # report.py's output beside the run
    (sweep / "report.md").write_text("| family | l0 |\n")
    run = make_run(sweep / "0", detector_sae(model, tok, WORDS, d_sae=D_SAE), eval_numbers=EVAL)
    result = build_browser(
        resolve_target(run), n_tokens=1500, top_k=8, context=5, chunk_size=CHUNK, progress=False
    )
    return run, Path(result["out"]), result


def test_folder_layout_meta_and_chunks(browser):
    run, out, result = browser
    assert out == run / "browser"
    names = sorted(p.name for p in (out / "data").iterdir())
    assert names == [
        "chunk_0000.js",
        "chunk_0001.js",
        "chunk_0002.js",
        "latents.js",
        "meta.js",
        "search.js",
    ]
    assert {p.name for p in out.iterdir()} == {"index.html", "browser.js", "browser.css", "data"}
    assert not [p for p in run.iterdir() if p.name.startswith(".browser")]  # no temp folder left
    html = (out / "index.html").read_text()
    assert "fetch(" not in (out / "browser.js").read_text() and "http" not in html  # offline
    meta = read_data(out / "data" / "meta.js")
    assert meta["tokens"] == result["tokens"] >= 1500 and meta["d_sae"] == D_SAE
    assert meta["n_chunks"] == 3 and meta["site"] == "resid" and meta["layer"] == 0
    assert meta["eval"]["delta_lm_loss"] == EVAL["delta_lm_loss"]
    hrefs = {link["label"]: link["href"] for link in meta["links"]}
    assert hrefs["eval.json"] == "../eval.json"
    assert hrefs["sweep report: pareto_delta_lm_loss.png"] == "../../pareto_delta_lm_loss.png"
    assert hrefs["sweep report: report.md"] == "../../report.md"
    assert meta["summary"]["dead"] >= 1 and meta["summary"]["dense_10pct"] >= 1
    table = read_data(out / "data" / "latents.js")
    assert len(table["density"]) == D_SAE and table["density"][-1] == 0  # the dead latent
    chunk = read_data(out / "data" / "chunk_0000.js")
    for j, word in enumerate(WORDS):
        assert table["top"][j] >= 0 and table["vocab"][table["top"][j]] == word
        rec = chunk["latents"][j]
        assert rec["c"] and all(chunk["vocab"][c[2][c[1]]] == word for c in rec["c"])
        assert len(rec["p"]) == len(rec["s"]) == 10
        assert read_data(out / "data" / "search.js")[word][0] == j
    last = read_data(out / "data" / "chunk_0002.js")
    assert (
        last["start"] == 32
        and len(last["latents"]) == D_SAE - 32
        and last["latents"][-1]["c"] == []
    )


@pytest.mark.slow
def test_rebuild_replaces_the_folder_and_refuses_foreign_ones(browser, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(browser[0], run, ignore=shutil.ignore_patterns("browser"))
    first = build_browser(resolve_target(run), n_tokens=100, top_k=2, context=1, progress=False)
    out = Path(first["out"])
    (out / "stale.txt").write_text("from an older build")
    again = build_browser(
        resolve_target(run / "sae"), n_tokens=100, top_k=2, context=1, logits=False, progress=False
    )
    assert Path(again["out"]) == out and not (out / "stale.txt").exists()
    assert read_data(out / "data" / "meta.js")["logits"] is False
    assert sorted(p.name for p in run.iterdir()) == ["browser", "config.json", "eval.json", "sae"]
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a saelab browser folder"):
        build_browser(resolve_target(run), foreign, n_tokens=100, progress=False)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_clear_errors_for_what_is_not_browsable(tmp_path, lm):
    with pytest.raises(ValueError, match="neither a run folder"):
        resolve_target(tmp_path)
    model, tok = lm
    run = make_run(tmp_path / "run", detector_sae(model, tok, [" self"], d_sae=8))
    with pytest.raises(ValueError, match="give --site and --layer"):
        resolve_target(shutil.copytree(run / "sae", tmp_path / "bare_sae"))
    target = resolve_target(tmp_path / "bare_sae", site="attn", layer=0)
    result = build_browser(target, n_tokens=64, top_k=2, context=1, progress=False)
    assert result["logits"] is False and "attn" in result["logits_note"]
    assert Path(result["out"]) == tmp_path / "bare_sae" / "browser"


class DomReader(HTMLParser):
    """Collects the table rows and the latent panel's context tokens from a dumped DOM."""

    def __init__(self):
        super().__init__()
        self.rows, self.tokens, self.stack, self.text, self.flags = [], [], [], {}, {}
        self.in_panel = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "data-latent" in a:
            self.rows.append(int(a["data-latent"]))
            self.flags[self.rows[-1]] = []
        if tag == "span" and "flag" in (a.get("class") or "").split():
            self.flags[self.rows[-1]].append(a.get("class").split()[1])
        if a.get("id") in ("latent-panel", "scan-info", "list-note"):
            self.text[a["id"]] = ""
        if tag == "span" and "tok" in (a.get("class") or "").split():
            self.tokens.append({"cls": a["class"], "style": a.get("style", ""), "text": ""})
        self.stack.append((tag, a))

    def handle_endtag(self, tag):
        while self.stack and self.stack.pop()[0] != tag:
            pass

    def handle_data(self, data):
        ids = [a.get("id") for _, a in self.stack]
        for key in self.text:
            if key in ids:
                self.text[key] += data
        if (
            self.stack
            and self.stack[-1][0] == "span"
            and "tok" in (self.stack[-1][1].get("class") or "")
        ):
            self.tokens[-1]["text"] += data


def dom(chromium, out: Path, fragment: str = "") -> DomReader:
    html = chromium(["--dump-dom", (out / "index.html").as_uri() + fragment])
    reader = DomReader()
    reader.feed(html)
    return reader


@pytest.mark.slow
def test_chromium_lists_the_latents(browser, chromium):
    _, out, result = browser
    page = dom(chromium, out)
    assert page.rows == list(range(D_SAE))
    assert f"Scanned {result['tokens']:,} tokens" in page.text["scan-info"]


@pytest.mark.slow
@pytest.mark.parametrize("latent", [1, 2])
def test_chromium_renders_a_shaded_latent_panel(browser, chromium, latent):
    """Latent 1 fires on " <", latent 2 on a docstring quote: the centre of every context is that token,
    shaded, and the page escaped it (the DOM parsed back gives exactly the token's text; the
    context tokens in order give exactly the chunk file's strings)."""
    _, out, _ = browser
    word = WORDS[latent]
    chunk = read_data(out / "data" / "chunk_0000.js")
    contexts = chunk["latents"][latent]["c"]
    page = dom(chromium, out, f"#latent={latent}")
    centres = [t for t in page.tokens if "center" in t["cls"]]
    assert len(centres) == len(contexts) > 0 and all(t["text"] == word for t in centres)
    assert all("background-color" in t["style"] for t in centres)
    shaded = [t for t in page.tokens if "background-color" in t["style"]]
    assert {t["text"] for t in shaded} == {word}  # nothing else fires in the windows
    want = [
        chunk["vocab"][i].replace("\n", "\u21b5").replace("\t", "    ")
        for c in contexts
        for i in c[2]
    ]
    assert [t["text"] for t in page.tokens] == want
    assert f"Latent {latent}" in page.text["latent-panel"]
    assert "Promoted output tokens" in page.text["latent-panel"]
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"browser-latent-{latent}.png"
    shot.unlink(missing_ok=True)
    chromium(
        [
            f"--screenshot={shot}",
            "--window-size=1400,900",
            (out / "index.html").as_uri() + f"#latent={latent}",
        ]
    )
    assert shot.stat().st_size > 20_000 and shot.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_chromium_sorts_and_flags(browser, chromium):
    """#sort / #filter are what a header click and the menu set: the rows come out in the
    order of the data, and dead and high-frequency latents carry their flags."""
    _, out, _ = browser
    table = read_data(out / "data" / "latents.js")
    for key in ("density", "max"):
        rows = dom(chromium, out, f"#sort={key}").rows
        assert sorted(rows) == list(range(D_SAE))
        assert rows == sorted(range(D_SAE), key=lambda i: (-table[key][i], -i))
    dead = [i for i in range(D_SAE) if table["density"][i] == 0]
    dense = [i for i in range(D_SAE) if table["density"][i] > 0.10]
    for flt, want, flag in (("dead", dead, "dead"), ("dense", dense, "dense")):
        page = dom(chromium, out, f"#filter={flt}")
        assert page.rows == want and page.flags == {i: [flag] for i in want}


@pytest.mark.slow
def test_chromium_search_finds_latents_by_token(browser, chromium):
    _, out, _ = browser
    page = dom(chromium, out, "#search=self")
    assert page.rows and page.rows[0] == 0 and "self" in page.text["list-note"]


@pytest.mark.slow
def test_browse_cli_end_to_end(browser, tmp_path):
    run, _, _ = browser
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "browse.py",
        str(run),
        "--tokens",
        "200",
        "--top-k",
        "3",
        "--out",
        str(tmp_path / "b"),
    ]
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        cmd, check=False, capture_output=True, text=True, cwd=root, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "written:" in proc.stdout and (tmp_path / "b" / "index.html").is_file()


def test_browse_cli_errors_name_the_problem(tmp_path, monkeypatch, capsys):
    import browse

    for args, message in [
        ([str(tmp_path)], "neither a run folder"),
        ([str(tmp_path / "nope")], "does not exist"),
    ]:
        monkeypatch.setattr(sys, "argv", ["browse.py", *args])
        with pytest.raises(SystemExit) as exit_info:
            browse.main()
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
