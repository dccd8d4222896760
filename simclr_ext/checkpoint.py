"""Checkpoints that survive interruption: written to a temporary file, fsync'ed, then renamed
into place (os.replace is atomic), so a crash mid-write leaves the last good checkpoint; the one
before it is kept as checkpoint_prev.pt, the fallback when the latest turns out unreadable (a
copy cut short on a network file system, a full disk). Read back with errors that say what is
wrong with which file (docs/architecture.md, section 7)."""
import os
import random

import numpy as np
import torch

FORMAT = "simclr_ext-checkpoint"
# 2: the trainer's views come from SimCLRAugment on the device, seeded per step (--augment); a
# version-1 run cannot continue with the views it started with.
VERSION = 2
LAST = "checkpoint_last.pt"
PREV = "checkpoint_prev.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, unreadable, or written for another model."""


class UnreadableCheckpoint(CheckpointError):
    """The file's bytes do not load (truncated, corrupt): an older checkpoint may still be good."""


def save_atomic(obj, path: str, keep_previous: bool = False):
    """Write obj to path atomically; keep_previous: first move the file already at path to
    checkpoint_prev.pt beside it (a crash between the two renames leaves that one, which
    load_latest falls back to)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and os.path.exists(path):
            os.replace(path, os.path.join(os.path.dirname(path), PREV))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def resolve(path: str) -> str:
    """A checkpoint file, or a run directory holding checkpoint_last.pt."""
    if os.path.isdir(path):
        path = os.path.join(path, LAST)
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}")
    return path


def load(path: str) -> dict:
    path = resolve(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated zip, bad pickle, garbage bytes: all one diagnosis
        raise UnreadableCheckpoint(
            f"checkpoint {path} is unreadable (truncated or corrupt): {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a simclr_ext checkpoint")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {ckpt.get('version')}, "
                              f"this simclr_ext reads version {VERSION}")
    ckpt["path"] = path
    return ckpt


def load_latest(run_dir: str, say=print):
    """The newest usable checkpoint of a run directory: checkpoint_last.pt, else (missing or
    unreadable, which `say` reports with its path) checkpoint_prev.pt; None when the directory
    holds neither. A readable checkpoint of another format version is an error, not a fallback:
    the previous one was written by the same code."""
    last, prev = os.path.join(run_dir, LAST), os.path.join(run_dir, PREV)
    if not os.path.isfile(last) and not os.path.isfile(prev):
        return None
    try:
        return load(last)
    except CheckpointError as exc:
        if not os.path.isfile(prev) or (os.path.isfile(last) and not isinstance(exc, UnreadableCheckpoint)):
            raise
        reason = str(exc) if os.path.isfile(last) else f"{last} is missing"
    try:
        ckpt = load(prev)
    except CheckpointError as exc:
        raise CheckpointError(f"no usable checkpoint in {run_dir}: {reason}; and {exc}") from exc
    say(f"warning: {reason}; resuming from the previous checkpoint {prev}")
    return ckpt


def load_model_state(module: torch.nn.Module, state: dict, path: str):
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise CheckpointError(f"checkpoint {path} does not fit this model: {' '.join(first)}") from exc


def rng_state(aug_generator=None) -> dict:
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state()
    if aug_generator is not None:
        st["augment"] = aug_generator.get_state()
    return st


def set_rng_state(st: dict, aug_generator=None):
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"])
    if aug_generator is not None and "augment" in st:
        aug_generator.set_state(st["augment"])
