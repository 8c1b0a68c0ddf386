"""Names and limits shared by training, export and the device, and the one budget parser."""

from __future__ import annotations

import math

from .errors import ConfigError

TASKS = ("multitask", "recon", "classify")
PRECISIONS = ("fp32", "fp16", "int8")
VARIANT_KINDS = ("onnx", "tensorrt")
MAX_FPR = 0.1  # pAUC range, as DCASE2020 Task 2
DEFAULT_BUDGETS = {"fp32": 0.001, "fp16": 0.005, "int8": 0.01}  # max |dAUC| per machine


def parse_budgets(text: str | None, option: str = "--budget", allowed: tuple[str, ...] = PRECISIONS,
                  bare: str | None = None, defaults: dict[str, float] | None = None) -> dict[str, float]:
    """``'fp16=0.005,int8=0.01'`` -> ``{'fp16': 0.005, 'int8': 0.01}``, on top of ``defaults``.

    A bare number is the budget of precision ``bare`` when given. Anything else is a
    :class:`ConfigError` naming ``option``.
    """
    budgets = dict(defaults or {})
    if not text:
        return budgets
    example = ",".join(f"{p}={DEFAULT_BUDGETS[p]}" for p in allowed)
    usage = f"{option} takes {'a number (' + bare + ') or ' if bare else ''}'{example}', got {text!r}"
    parts = [text] if bare and "=" not in text else text.split(",")
    for part in parts:
        key, sep, value = part.partition("=") if "=" in part else (bare or "", "=", part)
        key = key.strip()
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(usage) from None
        if key not in allowed or not sep or not math.isfinite(number) or number < 0:
            raise ConfigError(usage)
        budgets[key] = number
    return budgets
