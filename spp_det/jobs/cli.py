"""Small helpers every script uses: the run directory and user-facing error reporting."""
from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Callable

from ..errors import SppDetError

log = logging.getLogger("spp_det")


def run_dir() -> Path:
    """The Hydra run directory of the current job (the current directory outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # not inside a Hydra job
        return Path.cwd()


def report_errors(fn: Callable) -> Callable:
    """Turn a SppDetError into one line on stderr and exit code 1 (no traceback wall)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SppDetError as exc:
            log.error("error: %s", exc)
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)
    return wrapper
