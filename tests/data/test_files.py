"""Activation files as training data (``data=files``, ``saelab.data.ActivationFiles``): real
.npy, .safetensors and .pt files on disk whose row i holds the value i in every column, so
every batch says exactly which rows it holds."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from saelab.data import ActivationFiles, FilesDataConfig
from saelab.data.rowfiles import RowTable
from saelab.lit import TopKLit
from saelab.runner import train
from saelab.sae import load_sae
from tests.conftest import compose_config

D = 8


def rows(start: int, stop: int) -> torch.Tensor:
    return torch.arange(start, stop, dtype=torch.float32)[:, None].expand(-1, D).contiguous()


@pytest.fixture
def shards(tmp_path):
    """A folder of three shards in the three formats (700 + 500 + 848 = 2048 rows), in an
    order that only name-sorting gets right, plus a file that is not a shard."""
    folder = tmp_path / "acts"
    folder.mkdir()
    np.save(folder / "00.npy", rows(0, 700).numpy())
    save_file({"acts": rows(700, 1200).to(torch.float16)}, str(folder / "01.safetensors"))
    torch.save(rows(1200, 2048).double(), folder / "02.pt")
    (folder / "README.txt").write_text("activations of layer 3")
    return folder


def values(batch: torch.Tensor) -> list[int]:
    assert (batch == batch[:, :1]).all(), "a row holds one value in every column"
    return batch[:, 0].long().tolist()


def test_a_folder_of_shards_reads_as_one_table_across_file_boundaries(shards):
    table = RowTable(shards)
    assert (table.rows, table.d_in) == (2048, D)
    assert [f.dtype for f in table.files] == ["float32", "float16", "float64"]
    assert values(table.read(690, 1210)) == list(range(690, 1210))  # spans all three files


def test_epochs_cover_the_training_rows_once_in_blocks_and_never_the_held_out_rows(shards):
    data = ActivationFiles(
        shards, batch_size=128, block_size=64, val_tokens=256, prefetch_batches=0
    )
    assert data.d_in == D and data.split == 2048 - 256
    seen, stream = [], data.train_dataloader()
    for batch in stream:
        v = values(batch)
        assert all(v[i + 1] == v[i] + 1 for i in range(0, 128, 64) for i in range(i, i + 63))
        seen += v
    assert sorted(seen) == list(range(1792))  # every training row once, no validation row
    assert seen != sorted(seen), "blocks are shuffled"
    epoch1 = [values(b) for b in stream]  # the next iteration is the next epoch
    assert sum(epoch1, []) != seen and sorted(sum(epoch1, [])) == sorted(seen)  # reshuffled
    val = sum((values(b) for b in data.val_dataloader()), [])
    assert val == list(range(1792, 2048))  # the last rows, in order, every time


def test_ddp_ranks_read_what_one_process_with_the_global_batch_reads(shards):
    one = ActivationFiles(shards, batch_size=256, block_size=64, val_tokens=256, prefetch_batches=0)
    single = [values(b) for b in one._stream(0, one.split, 256, True, "yield", world=(0, 1))]
    ranks = [
        [values(b) for b in one._stream(0, one.split, 128, True, "yield", world=(r, 2), block=64)]
        for r in (0, 1)
    ]
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    for step, whole in enumerate(single):
        assert ranks[0][step] + ranks[1][step] == whole


def test_the_position_is_saved_and_restored_exactly(shards):
    kw = {"batch_size": 128, "block_size": 64, "val_tokens": 256, "prefetch_batches": 0}
    first = ActivationFiles(shards, **kw)
    stream = iter(first.train_dataloader())
    for _ in range(5):
        next(stream)
    state = first.state_dict()
    assert state["offset"] == 5 and state["files"][1][0] == "01.safetensors"
    expected = [values(next(stream)) for _ in range(4)]
    second = ActivationFiles(shards, **kw)
    second.load_state_dict(json.loads(json.dumps(state)))  # as stored in a checkpoint
    resumed = iter(second.train_dataloader())
    assert [values(next(resumed)) for _ in range(4)] == expected
    other = ActivationFiles(shards, **{**kw, "seed": 1})
    other.load_state_dict(state)
    with pytest.raises(ValueError, match="checkpoint was saved with seed=0"):
        other.train_dataloader()


def test_normalisation_sample_is_spread_over_the_files(shards):
    data = ActivationFiles(shards, batch_size=128, block_size=64, val_tokens=256)
    sample = values(data.sample_activations(640))
    assert len(sample) == 640 and max(sample) < 1792
    assert min(sample) < 700 < max(sample), "not just the first file"
    assert sample == values(data.sample_activations(640)), "deterministic"


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p: np.save(p / "x.npy", np.zeros((4, 2, 3), np.float32)), r"shape \(4, 2, 3\)"),
        (lambda p: np.save(p / "x.npy", np.zeros((4, 3), np.int64)), "holds int64 values"),
        (lambda p: np.save(p / "x.npy", np.zeros((0, 3), np.float32)), r"is empty \(0 rows\)"),
        (lambda p: (p / "x.csv").write_text("1,2"), ".csv is not a format saelab reads"),
        (
            lambda p: save_file({"a": rows(0, 9), "b": rows(0, 9)}, str(p / "x.safetensors")),
            r"holds 2 tensors \['a', 'b'\]; name the one to train on with data.key",
        ),
        (
            lambda p: torch.save({"acts": rows(0, 9), "cfg": TopKLit}, p / "x.pt"),
            "not a weights-only tensor file",
        ),
    ],
)
def test_bad_files_are_refused_naming_the_file_and_the_fix(tmp_path, write, message):
    write(tmp_path)
    (target,) = list(tmp_path.iterdir())
    with pytest.raises(ValueError, match=message):
        ActivationFiles(target, batch_size=2)


def test_folder_problems_are_named(tmp_path, shards):
    np.save(shards / "03.npy", np.zeros((10, D + 1), np.float32))
    with pytest.raises(ValueError, match="the files disagree on d_in"):
        ActivationFiles(shards)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ActivationFiles(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no .npy, .safetensors, .pt files"):
        ActivationFiles(tmp_path / "empty")


def test_keys_widths_and_sizes_are_checked(tmp_path):
    save_file(
        {"a": rows(0, 300), "b": rows(0, 300)[:, :4].contiguous()}, str(tmp_path / "x.safetensors")
    )
    assert ActivationFiles(tmp_path / "x.safetensors", key="b", batch_size=64).d_in == 4
    torch.save({"acts": rows(0, 256).bfloat16(), "step": torch.tensor(3)}, tmp_path / "y.pt")
    table = RowTable(tmp_path / "y.pt", key="acts")  # bf16 rows (exact below 256), in a dict
    assert table.files[0].dtype == "bfloat16" and values(table.read(0, 256)) == list(range(256))
    with pytest.raises(ValueError, match=r"no tensor data.key='c'; it holds \['a', 'b'\]"):
        ActivationFiles(tmp_path / "x.safetensors", key="c")
    with pytest.raises(ValueError, match="data.d_in=5 but .* holds 8-wide rows"):
        ActivationFiles(tmp_path / "x.safetensors", key="a", d_in=5, batch_size=64)
    with pytest.raises(ValueError, match="fewer than one training batch of data.batch_size=4096"):
        ActivationFiles(tmp_path / "x.safetensors", key="a")
    with pytest.raises(ValueError, match="data.val_fraction=1.5 is invalid"):
        FilesDataConfig(path=str(tmp_path / "x.safetensors"), key="a", val_fraction=1.5)


def test_non_finite_rows_stop_training_naming_file_and_row(tmp_path):
    x = rows(0, 512).numpy().copy()
    x[300, 2] = np.nan
    np.save(tmp_path / "x.npy", x)
    data = ActivationFiles(tmp_path / "x.npy", batch_size=64, block_size=64, prefetch_batches=0)
    with pytest.raises(ValueError, match=r"x.npy: row 300 holds a non-finite value"):
        for _ in data.train_dataloader():
            pass


def test_a_notebook_user_trains_with_a_lightning_module_and_trainer_directly(tmp_path):
    torch.manual_seed(0)
    np.save(tmp_path / "acts.npy", (torch.randn(4096, 16) @ torch.randn(16, 16)).numpy())
    data = ActivationFiles(tmp_path / "acts.npy", batch_size=256, val_tokens=512)
    module = TopKLit(d_in=data.d_in, d_sae=64, k=4, normalization_tokens=1024)
    trainer = pl.Trainer(
        max_steps=30,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=data)
    (metrics,) = trainer.validate(module, datamodule=data, verbose=False)
    assert metrics["val/fvu"] < 0.9 and metrics["val/l0"] == 4


@pytest.mark.slow
@pytest.mark.parametrize("source", ["npy", "shards"])
def test_data_files_trains_end_to_end_through_the_runner(tmp_path, shards, source):
    if source == "npy":
        path = tmp_path / "one.npy"
        np.save(path, (torch.randn(3000, D) * torch.arange(1, D + 1)).numpy())
    else:
        path = shards  # .npy, fp16 .safetensors, fp64 .pt: no d_in given anywhere
    cfg = compose_config(
        [
            "data=files",
            f"data.path={path}",
            "data.batch_size=128",
            "data.block_size=64",
            "data.hook_name=blocks.3.hook_resid_post",
            "sae=topk",
            "sae.k=4",
            "sae.expansion_factor=4",
            "sae.normalization_tokens=1024",
            "trainer=debug",
            "logger=none",
        ],
        tmp_path / "run",
    )
    metrics = train(cfg)
    assert metrics["steps"] == 20 and np.isfinite(metrics["val/fvu"])
    sae = load_sae(tmp_path / "run" / "sae")
    assert sae.d_in == D and sae.cfg.metadata.hook_name == "blocks.3.hook_resid_post"
    resolved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert resolved["data"]["d_in"] == resolved["sae"]["d_in"] == D


def test_the_config_reads_d_in_from_the_files_before_anything_is_built(tmp_path, shards):
    cfg = compose_config(["data=files", f"data.path={shards}"], tmp_path)
    assert cfg.data.d_in == cfg.sae.d_in == D  # the files' width, through ${data.d_in}
    cfg = compose_config(["data=files"], tmp_path)
    with pytest.raises(Exception, match="Missing mandatory value: data.path"):
        cfg.sae.d_in  # noqa: B018
