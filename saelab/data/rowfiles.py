"""Activation files a user already has, read as one memory-mapped table of float rows.

A file is a 2-D float tensor ``[tokens, d_in]`` in one of three containers, each opened so that
nothing is read until rows are asked for (files larger than RAM work):

    .npy           numpy.load(mmap_mode="r"), allow_pickle=False
    .safetensors   safetensors' safe_open + get_slice (one tensor, or the one named by ``key``)
    .pt            torch.load(mmap=True, weights_only=True): a tensor, or a dict of tensors
                   (``key``); written by torch.save (zip format)

A folder is the concatenation of its files with these suffixes, sorted by name (shards). Rows
are converted to float32 as they are read, and every read checks its rows are finite, naming
the file and row of the first bad one.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from saelab.fileio import unreadable_files, unreadable_reason

SUFFIXES = (".npy", ".safetensors", ".pt")
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
_SAFETENSORS_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}


class RowFile:
    """One file of float rows, opened lazily (per thread for safetensors handles)."""

    def __init__(self, path: Path, key: str | None):
        self.path, self.key = path, key
        self._local = threading.local()
        kind = path.suffix
        if kind == ".npy":
            rows, d_in, dtype = self._probe_npy()
        elif kind == ".safetensors":
            rows, d_in, dtype = self._probe_safetensors()
        else:
            rows, d_in, dtype = self._probe_pt()
        if dtype not in FLOAT_DTYPES:
            raise ValueError(
                f"{path} holds {dtype} values; activations must be floats "
                f"({', '.join(FLOAT_DTYPES)})."
            )
        if rows == 0:
            raise ValueError(f"{path} is empty (0 rows); remove it or write the activations.")
        self.rows, self.d_in, self.dtype = int(rows), int(d_in), dtype
        self.size = path.stat().st_size

    # --- opening ----------------------------------------------------------------------------
    def _shape_error(self, shape) -> ValueError:
        return ValueError(
            f"{self.path} holds an array of shape {tuple(shape)}; expected float rows "
            "[tokens, d_in] (2-D). Reshape it, e.g. x.reshape(-1, d_in), before saving."
        )

    def _probe_npy(self):
        array = self._npy()
        if array.ndim != 2:
            raise self._shape_error(array.shape)
        return array.shape[0], array.shape[1], array.dtype.name

    def _npy(self) -> np.ndarray:
        array = getattr(self._local, "array", None)
        if array is None:
            try:
                array = np.load(self.path, mmap_mode="r", allow_pickle=False)
            except (ValueError, OSError) as error:
                raise ValueError(f"{self.path} is not a readable .npy array: {error}") from None
            self._local.array = array
        return array

    def _probe_safetensors(self):
        piece = self._slice()
        shape = piece.get_shape()
        if len(shape) != 2:
            raise self._shape_error(shape)
        return shape[0], shape[1], _SAFETENSORS_DTYPES.get(piece.get_dtype(), piece.get_dtype())

    def _slice(self):
        piece = getattr(self._local, "slice", None)
        if piece is None:
            try:
                handle = safe_open(str(self.path), framework="pt")
            except (SafetensorError, OSError) as error:
                raise ValueError(
                    f"{self.path} is not a readable safetensors file: {error}"
                ) from None
            self._local.handle = handle  # keeps the memory map open
            piece = handle.get_slice(self._pick(list(handle.keys())))
            self._local.slice = piece
        return piece

    def _probe_pt(self):
        tensor = self._tensor()
        if tensor.dim() != 2:
            raise self._shape_error(tensor.shape)
        return tensor.shape[0], tensor.shape[1], str(tensor.dtype).removeprefix("torch.")

    def _tensor(self) -> Tensor:
        tensor = getattr(self._local, "tensor", None)
        if tensor is None:
            try:
                obj = torch.load(self.path, map_location="cpu", mmap=True, weights_only=True)
            except Exception as error:  # torch raises several types for non-zip or pickled files
                first = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise ValueError(
                    f"{self.path} is not a weights-only tensor file saved with torch.save: {first}"
                ) from None
            if isinstance(obj, dict):
                names = [k for k, v in obj.items() if isinstance(v, Tensor)]
                obj = obj[self._pick(names)]
            if not isinstance(obj, Tensor):
                raise ValueError(f"{self.path} holds a {type(obj).__name__}, not a tensor.")
            tensor = self._local.tensor = obj
        return tensor

    def _pick(self, names: list[str]) -> str:
        """The tensor named by ``key``, or the only one."""
        if self.key is not None:
            if self.key not in names:
                raise ValueError(
                    f"{self.path} has no tensor data.key={self.key!r}; it holds {sorted(names)}."
                )
            return self.key
        if len(names) != 1:
            raise ValueError(
                f"{self.path} holds {len(names)} tensors {sorted(names)}; name the one to train "
                "on with data.key=<name>."
            )
        return names[0]

    # --- reading ----------------------------------------------------------------------------
    def read(self, start: int, stop: int) -> Tensor:
        """Rows [start, stop) as float32 [stop - start, d_in] (a copy)."""
        if self.path.suffix == ".npy":
            return torch.from_numpy(np.array(self._npy()[start:stop], dtype=np.float32))
        if self.path.suffix == ".safetensors":
            return self._slice()[start:stop].to(torch.float32)
        return self._tensor()[start:stop].to(torch.float32, copy=True)


def _check_readable(folder: Path, files: list[Path]) -> None:
    problem = unreadable_files(folder, files)
    if problem:
        raise ValueError(
            f"data.path={str(folder)!r}: {problem}. Mount or restore them, or move them out of "
            "the folder to train without them."
        )


class RowTable:
    """The files at ``path`` as one table of rows (a folder's files in name order)."""

    def __init__(self, path: str | os.PathLike, key: str | None = None):
        path = Path(path).expanduser()
        if path.is_symlink() and not path.exists():
            raise FileNotFoundError(
                f"data.path={str(path)!r} is {unreadable_reason(path)}; point it at the "
                "activations themselves (is the disk they are on mounted?)."
            )
        if not path.exists():
            raise FileNotFoundError(
                f"data.path={str(path)!r} does not exist; point it at a .npy, .safetensors or .pt "
                "file of activations [tokens, d_in], or a folder of them."
            )
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in SUFFIXES)
            _check_readable(path, files)
            if not files:
                found = sorted(p.name for p in path.iterdir())[:10]
                raise ValueError(
                    f"data.path={str(path)!r} holds no {', '.join(SUFFIXES)} files "
                    f"(found: {', '.join(found) or 'nothing'})."
                )
        elif path.suffix in SUFFIXES:
            files = [path]
        else:
            raise ValueError(
                f"data.path={str(path)!r}: {path.suffix or 'no suffix'} is not a format saelab "
                f"reads; use {', '.join(SUFFIXES)} (or a folder of them)."
            )
        self.path = path
        self.files = [RowFile(p, key) for p in files]
        widths = {f.d_in for f in self.files}
        if len(widths) != 1:
            detail = ", ".join(f"{f.path.name}: {f.d_in}" for f in self.files[:8])
            raise ValueError(f"{path}: the files disagree on d_in ({detail}); use one width.")
        self.d_in = self.files[0].d_in
        self.starts = np.cumsum([0] + [f.rows for f in self.files])
        self.rows = int(self.starts[-1])

    def fingerprint(self) -> list:
        """What identifies the data for a resume: names, sizes, shapes and dtypes."""
        return [[f.path.name, f.size, f.rows, f.d_in, f.dtype] for f in self.files]

    def read(self, start: int, stop: int) -> Tensor:
        """Global rows [start, stop) as float32, across file boundaries; a ValueError naming the
        file and row if any value is NaN or inf."""
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        parts, i = [], first
        while start < stop:
            f, offset = self.files[i], int(self.starts[i])
            end = min(stop, offset + f.rows)
            part = f.read(start - offset, end - offset)
            if not torch.isfinite(part).all():
                bad = int((~torch.isfinite(part)).any(dim=1).nonzero()[0])
                raise ValueError(
                    f"{f.path}: row {start - offset + bad} holds a non-finite value (NaN or inf); "
                    "fix or drop those rows before training."
                )
            parts.append(part)
            start, i = end, i + 1
        return parts[0] if len(parts) == 1 else torch.cat(parts)
