"""Checkpoints that survive interruption: written to a temporary file, fsync'ed, then renamed
over the previous one (os.replace is atomic), so a crash mid-write leaves the last good
checkpoint in place; read back with errors that say what is wrong with which file."""
import os
import random

import numpy as np
import torch

FORMAT = "simclr_ext-checkpoint"
VERSION = 1
LAST = "checkpoint_last.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, unreadable, or written for another model."""


def save_atomic(obj, path: str):
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
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
        raise CheckpointError(
            f"checkpoint {path} is unreadable (truncated or corrupt): {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a simclr_ext checkpoint")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {ckpt.get('version')}, "
                              f"this simclr_ext reads version {VERSION}")
    ckpt["path"] = path
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
