"""Load any causal LM and its tokenizer through one code path (transformers Auto classes).

`tiny-gemma-2` names the model shipped inside this package (saelab/lm/assets/tiny-gemma-2);
anything else is a local folder or a Hugging Face hub id. Remote code is never run unless
the caller asks for it explicitly (`trust_remote_code=True`).
"""

from __future__ import annotations

import os
import socket
import threading
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

import huggingface_hub
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.utils import logging as hf_logging

from saelab.fileio import unreadable_reason

ASSETS = Path(__file__).resolve().parent / "assets"
EMBEDDED = {"tiny-gemma-2": ASSETS / "tiny-gemma-2"}
PRETRAIN_COMMAND = "python -m saelab.lm.pretrain --out saelab/lm/assets/tiny-gemma-2 --seed 0"

# Gemma 2 soft-caps attention logits; the SDPA/flash kernels skip that, so activations would
# differ slightly from the reference model. Eager attention is exact.
_EAGER_MODEL_TYPES = {"gemma2", "gemma3", "gemma3_text"}


class ModelLoadError(OSError):
    """A model or tokenizer could not be found or fetched; the message says what to do."""


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith(("/", "./", "../", "~", ".\\"))
        or name.count("/") > 1
        or (os.sep != "/" and os.sep in name)
    )


def resolve(name_or_path: str | os.PathLike) -> str:
    """Map a model name to what transformers should load: a folder path or a hub id."""
    name = str(name_or_path)
    if name in EMBEDDED:
        folder = EMBEDDED[name]
        if not (folder / "config.json").is_file():
            raise ModelLoadError(
                f"the embedded model {name!r} is missing from {folder} (an incomplete install "
                f"or checkout). Rebuild it with: {PRETRAIN_COMMAND}"
            )
        return str(folder)
    path = Path(name).expanduser()
    if path.is_symlink() and not path.exists():
        raise ModelLoadError(
            f"model.name_or_path={name!r} is {unreadable_reason(path)}; point it at the model "
            "folder itself (is the disk it is on mounted?)"
        )
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"model.name_or_path={name!r} is a local path but has no config.json; point it "
                "at a folder written by save_pretrained (config.json + weights)"
            )
        _check_safe_weights(path, name)
        return str(path)
    if _looks_like_path(name):
        raise ModelLoadError(
            f"model.name_or_path={name!r}: no such local folder. Check the path, or use a hub "
            "id (e.g. google/gemma-2-2b) or model=tiny-gemma-2 (embedded, offline)"
        )
    return name  # a hub id


PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt")


def _check_safe_weights(folder: Path, name: str) -> None:
    """A local model folder must hold safetensors weights: saelab never unpickles a model's
    weights (a pickle can run code), so a folder of only pickled ones cannot load."""
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLED_WEIGHTS)
    if pickled:
        raise ModelLoadError(
            f"model.name_or_path={name!r} holds only pickled weights ({', '.join(pickled[:4])}); "
            "saelab loads safetensors only, since unpickling a file can run code. Convert them "
            "once, with a model you trust: AutoModelForCausalLM.from_pretrained(path)"
            ".save_pretrained(path, safe_serialization=True)"
        )


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host answers a TCP connection within ``timeout`` seconds.

    Without this, a hub id that is in no local cache costs huggingface_hub's retries (about
    30 s) before the same error on a machine without network; probing first lets every load
    go straight to the local cache. A proxy is trusted to reach the hub (not probed), and
    HF_HUB_OFFLINE=1 skips the network without any probe. The probe runs once per process.
    """
    if huggingface_hub.constants.is_offline_mode():
        return False
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(huggingface_hub.constants.ENDPOINT)
    return _answers(url.hostname, url.port or (443 if url.scheme == "https" else 80), timeout)


@cache
def _answers(host: str, port: int, timeout: float) -> bool:
    answer: list[bool] = []

    def probe() -> None:  # in a thread: name resolution ignores socket timeouts
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answer and answer[0])


def _local_only(target: str) -> bool:
    """Load from the local hub cache only: a folder, or a hub id while the hub is unreachable."""
    return Path(target).exists() or not hub_reachable()


def explain(name: str, what: str, err: Exception) -> ModelLoadError:
    offline = huggingface_hub.constants.is_offline_mode()
    if offline:
        where = " only, HF_HUB_OFFLINE is set)."
    elif not hub_reachable():
        where = f" only: {huggingface_hub.constants.ENDPOINT} is unreachable from here)."
    else:
        where = ", then the network)."
    lines = [
        f"could not load the {what} {name!r}.",
        f"Tried: the embedded names {sorted(EMBEDDED)}, a local folder {name!r} "
        f"({'found, but it did not load' if Path(name).expanduser().exists() else 'not found'}), "
        f"and the Hugging Face hub id {name!r} (local cache" + where,
        f"Cause: {type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}",
        "What to do:",
        "  - check the spelling of the hub id / path;",
        "  - gated models (google/gemma-2-*): accept the licence on the model's hub page, then "
        "run `huggingface-cli login` (newer hubs: `hf auth login`; or set HF_TOKEN);",
        "  - no network here: download once elsewhere with `huggingface-cli download <id>` and "
        "copy the cache (or a save_pretrained folder) over, then pass its path; "
        "HF_HUB_OFFLINE=1 skips the network retries;",
        "  - or run fully offline with the embedded model: model=tiny-gemma-2.",
    ]
    return ModelLoadError("\n".join(lines))


def _as_dtype(dtype: str | torch.dtype) -> str | torch.dtype:
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"model.dtype={dtype!r}: use float32, bfloat16, float16 or auto")
    return value


def load_config(target: str, revision: str | None = None, trust_remote_code: bool = False):
    """The transformers config of a resolved model (``resolve``): config.json only, no weights.
    OSError (wrapped by the callers) if it is neither local nor reachable."""
    return AutoConfig.from_pretrained(
        target,
        revision=revision,
        trust_remote_code=trust_remote_code,
        local_files_only=_local_only(target),
    )


def load_model(
    name_or_path: str | os.PathLike,
    dtype: str | torch.dtype = "float32",
    revision: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """A causal LM in eval mode with gradients off (we read activations, never train it)."""
    target = resolve(name_or_path)
    try:
        config = load_config(target, revision, trust_remote_code)
        if attn_implementation is None and config.model_type in _EAGER_MODEL_TYPES:
            attn_implementation = "eager"
        with _no_weight_loading_bar():
            model = _from_pretrained(
                target, config, revision, dtype, trust_remote_code, attn_implementation
            )
    except OSError as e:
        if isinstance(e, ModelLoadError):
            raise
        raise explain(str(name_or_path), "model", e) from e
    model.eval()
    model.requires_grad_(False)
    return model


def _from_pretrained(target, config, revision, dtype, trust_remote_code, attn_implementation):
    return AutoModelForCausalLM.from_pretrained(
        target,
        config=config,
        revision=revision,
        dtype=_as_dtype(dtype),
        trust_remote_code=trust_remote_code,
        attn_implementation=attn_implementation,
        use_safetensors=True,  # never unpickle .bin weights
        local_files_only=_local_only(target),
    )


@contextmanager
def _no_weight_loading_bar():
    """No bar of transformers' own while it copies the weights into the model ("Loading
    weights"): a phase of seconds that would draw a bar between saelab's. Its warnings, and
    huggingface_hub's download bars (not drawn through this hook), are left as they are.
    transformers before 5 has no hook, and draws such a bar only for sharded checkpoints."""
    set_hook = getattr(hf_logging, "set_tqdm_hook", None)
    if set_hook is None:
        yield
        return
    previous = set_hook(None)

    def disabled(factory, args, kwargs):
        kwargs = {**kwargs, "disable": True}
        return previous(factory, args, kwargs) if previous else factory(*args, **kwargs)

    set_hook(disabled)
    try:
        yield
    finally:
        set_hook(previous)


def load_tokenizer(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    trust_remote_code: bool = False,
):
    """The model's tokenizer (fast tokenizer; Gemma-style ones prepend <bos>)."""
    target = resolve(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(
            target,
            revision=revision,
            trust_remote_code=trust_remote_code,
            local_files_only=_local_only(target),
        )
    except OSError as e:
        raise explain(str(name_or_path), "tokenizer", e) from e


def lm_device(device: str, trainer=None) -> torch.device:
    """``data.device`` as a torch device; ``auto`` is the Trainer's device when there is one
    (each DDP rank runs its LM on its own GPU), else cuda if available, else cpu."""
    if device != "auto":
        return torch.device(device)
    if trainer is not None:
        return trainer.strategy.root_device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_lm(model, device: torch.device | str):
    """(model in eval mode on ``device``, tokenizer) for a ``ModelConfig`` (``data.model``)."""
    lm = load_model(model.name_or_path, model.dtype, model.revision, model.trust_remote_code)
    tokenizer = load_tokenizer(model.name_or_path, model.revision, model.trust_remote_code)
    return lm.to(device).eval(), tokenizer
