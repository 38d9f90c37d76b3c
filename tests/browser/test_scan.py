"""The streamed scan keeps the true top-k: checked against a dense computation over the same
tokens (synthetic activations, then the real tiny-gemma-2), and a latent built to fire on one
token shows that token at the centre of every top context."""

from __future__ import annotations

import pytest
import torch

from saelab.browser.scan import N_BINS, PAD_ID, LatentScanner, scan_latents
from saelab.lm.contexts import iter_token_batches, keep_mask
from saelab.lm.corpus import iter_documents
from saelab.lm.sites import SitePoint, forward_until
from tests.browser.conftest import detector_sae, token_id

K, W = 5, 3


def check_against_dense(res, ids: torch.Tensor, f: torch.Tensor) -> None:
    """ids [R, T], f [R, T, M] (zero where not text): everything the scan kept, recomputed."""
    R, T, M = f.shape
    flat = f.reshape(R * T, M)
    fires = (flat != 0).sum(0)
    assert torch.equal(res.fires, fires)
    assert torch.equal(res.hist.sum(1), fires)
    torch.testing.assert_close(res.max_act, flat.max(0).values)
    for m in range(M):
        n = min(int(fires[m]), K)
        dense_vals, _ = flat[:, m].topk(K)
        torch.testing.assert_close(res.top_values[m, :n], dense_vals[:n])
        assert (res.top_values[m, n:] == 0).all() and (res.top_positions[m, n:] == -1).all()
        for j in range(n):
            p = int(res.top_positions[m, j])
            assert flat[p, m] == res.top_values[m, j]  # the kept position really has that value
            row, col = divmod(p, T)
            for o in range(-W, W + 1):
                c = col + o
                want_id = int(ids[row, c]) if 0 <= c < T else PAD_ID
                want_act = float(f[row, c, m]) if 0 <= c < T else 0.0
                assert int(res.window_ids[m, j, o + W]) == want_id
                assert float(res.window_acts[m, j, o + W]) == pytest.approx(want_act)
        if n:  # distinct positions, and the top-1 is the argmax of the dense column
            assert len(set(res.top_positions[m, :n].tolist())) == n
            assert res.top_values[m, 0] == flat[:, m].max()


def test_running_merge_equals_dense_topk_on_synthetic_batches():
    g = torch.Generator().manual_seed(0)
    B, T, M = 3, 9, 12
    scanner = LatentScanner(M, top_k=K, context=W, context_length=T)
    all_ids, all_f, kept = [], [], 0
    for _ in range(4):
        ids = torch.randint(5, 100, (B, T), generator=g)
        keep = torch.rand(B, T, generator=g) > 0.2
        keep[1, 4] = True
        f = torch.relu(torch.randn(B, T, M, generator=g) * torch.linspace(0.2, 3, M) - 1.5)
        f[..., 0] = 0.0  # a dead latent
        f[..., 1] = 0.0
        f[1, 4, 1] = 2.5  # a latent that fires fewer than K times
        scanner.update(ids, keep, f)
        all_ids.append(ids)
        all_f.append(f * keep.unsqueeze(-1))
        kept += int(keep.sum())
    res = scanner.result()
    assert res.tokens == kept and res.contexts == 4 * B
    check_against_dense(res, torch.cat(all_ids), torch.cat(all_f))
    assert res.fires[0] == 0 and res.fires[1] == 4  # one firing per batch for latent 1
    assert res.hist.shape == (M, N_BINS)


@torch.no_grad()
def dense_pass(sae, model, tokenizer, point, n_tokens, context_length=64, batch=4):
    """The same batches scan_latents reads, every activation kept."""
    ids_all, f_all, tokens = [], [], 0
    for ids, mask in iter_token_batches(
        tokenizer, iter_documents(None, "validation"), context_length, batch
    ):
        keep = torch.from_numpy(keep_mask(ids, mask, tokenizer))
        x = forward_until(model, torch.from_numpy(ids), torch.from_numpy(mask), [point])[point]
        f = sae.encode(x.float()) * keep.unsqueeze(-1)
        ids_all.append(torch.from_numpy(ids))
        f_all.append(f)
        tokens += int(keep.sum())
        if tokens >= n_tokens:
            break
    return torch.cat(ids_all), torch.cat(f_all), tokens


def test_top_contexts_are_the_true_argmax_positions_on_the_real_model(lm):
    model, tok = lm
    sae = detector_sae(model, tok, [" self"], d_sae=24)
    point = SitePoint("resid", 0)
    res = scan_latents(
        sae,
        model,
        tok,
        point,
        iter_documents(None, "validation"),
        context_length=64,
        n_tokens=700,
        top_k=K,
        context=W,
        lm_batch_size=4,
        progress=False,
    )
    ids, f, tokens = dense_pass(sae, model, tok, point, 700)
    assert res.tokens == tokens and res.contexts == ids.shape[0] and tokens >= 700
    check_against_dense(res, ids, f)
    assert (res.fires == 0).sum() >= 1 and (res.density > 0.10).sum() >= 1  # dead and dense exist


def test_a_latent_built_for_one_token_shows_it_in_every_top_context(lm):
    model, tok = lm
    word = " self"
    sae = detector_sae(model, tok, [word], d_sae=4)
    res = scan_latents(
        sae,
        model,
        tok,
        SitePoint("resid", 0),
        iter_documents(None, "validation"),
        context_length=64,
        n_tokens=2000,
        top_k=10,
        context=4,
        lm_batch_size=8,
        progress=False,
    )
    target = token_id(tok, word)
    ids, _, _ = dense_pass(sae, model, tok, SitePoint("resid", 0), 2000, batch=8)
    occurrences = int((ids == target).sum())
    assert occurrences >= 10
    assert int(res.fires[0]) == occurrences  # fires on every occurrence and nowhere else
    assert (res.top_positions[0] >= 0).all()
    assert (res.window_ids[0, :, 4] == target).all()  # the centre of every context
    on = res.window_acts[0] > 0
    assert (res.window_ids[0][on] == target).all()  # shading only ever on that token


def test_the_scan_bar_ends_at_100_percent_of_what_it_scanned(lm, capsys):
    """Asked for more tokens than the texts hold, the bar ends at what was scanned, 100%,
    rather than stopping part-way as if the scan had been cut short."""
    model, tok = lm
    sae = detector_sae(model, tok, [" self"], d_sae=24)
    texts = ["def f(self):\n    return self.x\n" * 20] * 3
    res = scan_latents(
        sae,
        model,
        tok,
        SitePoint("resid", 0),
        texts,
        context_length=64,
        n_tokens=100_000,
        lm_batch_size=4,
    )
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "100%" in last and f"{res.tokens}/{res.tokens}" in last
