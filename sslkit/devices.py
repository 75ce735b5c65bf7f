"""Devices: the one check that turns a device a user names (a recipe's ``train.device``, a ``device=`` argument)
into a ``torch.device`` this machine has.

torch takes ``"gpu"`` or ``"cuda:x"`` only to fail with its own RuntimeError, and ``"cuda:7"`` on a machine with
fewer GPUs or ``"mps"`` off a Mac at the first tensor moved there, after the data is loaded. Here each is one
``UserError`` line that names the value, where it came from and what is accepted, before any work.
"""

from __future__ import annotations

import torch

from sslkit.errors import UserError

TRAIN_KINDS = ("cpu", "cuda")  # what pretraining and fine-tuning run on (train.device)
KINDS = ("cpu", "cuda", "mps")  # what the evaluation functions take (device=)


def accepted(kinds: tuple[str, ...]) -> str:
    """The device names ``kinds`` allow, in words: ``auto, cpu, cuda or cuda:N``."""
    names = ["auto"]
    for kind in kinds:
        names += ["cuda", "cuda:N"] if kind == "cuda" else [kind]
    return ", ".join(names[:-1]) + " or " + names[-1]


def _cuda_devices(n: int) -> str:
    return "cuda:0" if n == 1 else f"cuda:0 to cuda:{n - 1}"


def checked_device(device: str | torch.device | None, name: str = "device", where: str = "",
                   kinds: tuple[str, ...] = KINDS, here: bool = True) -> torch.device:
    """``device`` as a ``torch.device``; ``None`` and ``"auto"`` are CUDA where torch sees it, else the CPU.

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` (where ``kinds`` has it), or a
            ``torch.device``.
        name: what gave it, as the message names it: a recipe key (``train.device``) or an argument (``device``).
        where: the file and line (or ``--set``) that gave it, as :mod:`sslkit.config`'s messages start; "" for none.
        kinds: the device types accepted.
        here: also check that this machine has the device (CUDA, its index, MPS); off for a recipe that is read,
            not run, here.

    Raises:
        UserError: one line: the value given, where, and what is accepted or available instead.
    """
    at = f"{where}: " if where else ""
    given = str(device) if isinstance(device, torch.device) else device
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):  # "gpu", "cuda:x", "CUDA", "cuda:0 ", a number
        resolved = None
    if resolved is None or resolved.type not in kinds:
        raise UserError(f"{at}{name} must be {accepted(kinds)}, got {given!r}")
    if not here:
        return resolved
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise UserError(f"{at}{name} is {given!r} but no CUDA device is available — use auto or cpu")
        if resolved.index is not None and resolved.index >= count:
            raise UserError(f"{at}{name} is {given!r} but this machine has {count} CUDA device(s), "
                            f"{_cuda_devices(count)} — use one of them, or auto")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{at}{name} is {given!r} but MPS (Apple's GPU) is not available here — use auto or cpu")
    return resolved
