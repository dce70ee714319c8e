"""Keep CPU (host) memory from fragmenting: a fixed glibc ``mmap`` threshold.

**Why.** glibc ``malloc`` serves an allocation above its *mmap threshold* with its own ``mmap`` and
returns it to the system on ``free``; smaller ones come from the heap arenas, whose freed space is
kept by the process. The threshold is dynamic by default: every time an mmapped block is freed, it
rises to that block's size (up to 32 MiB on 64-bit). A PyTorch CPU training step allocates and frees
many tensors of a few MiB (e.g. one layer's activations for a chunk of class prompts), so after the
first step they all come from the arenas, which fragment and never shrink: the process's resident
memory grows far beyond what its live tensors need. Measured on this project's CPU (DualCoOp, CLIP
RN101, batch 2; ``mlrkit bench classes``, docs/benchmarks.md): 312 classes, peak 4.4 GB with glibc's
default vs 2.9 GB with a fixed 1 MiB threshold; 5,000 classes, killed by the OOM killer at 23 GB vs
3.75 GB.

Setting the threshold (``mallopt(M_MMAP_THRESHOLD, n)``) also switches the dynamic adjustment off, so
every block of at least ``n`` bytes is mapped and unmapped on its own and freed memory goes back to the
system at once. This is what ``MALLOC_MMAP_THRESHOLD_=n`` does when set before the process starts; the
functions here do it at run time (only allocations made afterwards are affected).

**Cost.** Mapping and unmapping every large block costs page faults on every step: measured in
interleaved fresh processes (``mlrkit bench allocator``), DualCoOp at 312 classes runs 1.29x slower
for 0.71x the memory, and a ResNet-50 448 px fine-tuning step 2.04x slower for 0.85x. Hence the
policy (``MLRKIT_MMAP_THRESHOLD``): ``auto`` (default) fixes the threshold only in the regime where
the heap fragments without bound, the chunked text encoding of many classes
(:func:`use_for_chunked_text`, called by the prompt methods); a size applies that threshold to every
command from the start; ``off`` never changes glibc's default.

Only glibc (Linux) has ``mallopt``; elsewhere the functions do nothing and say so. CUDA memory is not
concerned (it has PyTorch's own caching allocator).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os

from mlrkit.errors import ConfigError

log = logging.getLogger(__name__)

#: ``mallopt`` parameter number of ``M_MMAP_THRESHOLD`` (glibc ``malloc.h``)
M_MMAP_THRESHOLD = -3
#: the fixed threshold of the ``auto`` policy: blocks of 1 MiB and more are mapped on their own
DEFAULT_MMAP_THRESHOLD = 1 << 20
#: environment variable: a size (applied at start, every command), ``off`` (never) or ``auto`` (default)
ENV_VAR = "MLRKIT_MMAP_THRESHOLD"
#: glibc caps the threshold at HEAP_MAX_SIZE / 2 (32 MiB on 64-bit)
MAX_MMAP_THRESHOLD = 32 << 20


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None


def set_mmap_threshold(nbytes: int) -> bool:
    """Fix glibc's mmap threshold at ``nbytes`` (0 < nbytes <= 32 MiB); False where there is no glibc."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or not 0 < nbytes <= MAX_MMAP_THRESHOLD:
        raise ConfigError(f"mmap threshold must be an integer in 1..{MAX_MMAP_THRESHOLD} bytes, got {nbytes!r}")
    libc = _libc()
    if libc is None:
        log.debug("no glibc mallopt here: host allocator left as it is")
        return False
    return bool(libc.mallopt(ctypes.c_int(M_MMAP_THRESHOLD), ctypes.c_int(nbytes)))


AUTO = "auto"


def parse_threshold(value: str | None) -> int | str:
    """What an ``MLRKIT_MMAP_THRESHOLD`` value asks for: bytes, 0 (glibc's default) or ``"auto"``
    (unset or empty: see :func:`use_for_chunked_text`). Accepts a byte count or a size with a ``K``/``M``
    suffix (binary units), ``0``/``off``, ``auto``."""
    if value is None or not value.strip() or value.strip().lower() == AUTO:
        return AUTO
    v = value.strip().lower()
    if v in ("0", "off", "none", "false", "no"):
        return 0
    mult = {"k": 1 << 10, "m": 1 << 20}.get(v[-1], 1)
    digits = v[:-1] if mult != 1 else v
    if not digits.isdigit():
        raise ConfigError(f"{ENV_VAR} must be a byte count (e.g. 1048576, 1M, 64K), 'auto' or 'off', got {value!r}")
    n = int(digits) * mult
    if n > MAX_MMAP_THRESHOLD:
        raise ConfigError(f"{ENV_VAR} must be at most 32M (glibc's limit), got {value!r}")
    return n


#: this process's host-allocator setting as last changed here (the allocator itself is process-wide)
_SETTING: dict[str, str] = {"now": "glibc default (dynamic mmap threshold)"}


def host_allocator_setting() -> str:
    """One line describing the setting this module last made in this process (benchmarks record it)."""
    return _SETTING["now"]


def _apply(n: int) -> str:
    _SETTING["now"] = f"glibc, mmap threshold {n // 1024} KiB" if set_mmap_threshold(n) else \
        "system default (no glibc mallopt)"
    return _SETTING["now"]


def _requested(env) -> int | str | None:
    """What the environment asks for: ``MLRKIT_MMAP_THRESHOLD`` parsed, or None when glibc's own
    ``MALLOC_MMAP_THRESHOLD_`` is set (glibc applied it at start; mlrkit then changes nothing)."""
    return None if "MALLOC_MMAP_THRESHOLD_" in env else parse_threshold(env.get(ENV_VAR))


def configure_host_allocator(environ: dict[str, str] | None = None) -> str:
    """At process start (the CLI, every benchmark case): apply an explicit ``MLRKIT_MMAP_THRESHOLD``
    size; leave glibc's default for ``off``, for ``auto`` (the default: decided later by
    :func:`use_for_chunked_text`) and when glibc's own ``MALLOC_MMAP_THRESHOLD_`` is set. Returns a
    one-line description of the host allocator's setting."""
    env = os.environ if environ is None else environ
    n = _requested(env)
    if n is None:
        _SETTING["now"] = f"glibc, MALLOC_MMAP_THRESHOLD_={env['MALLOC_MMAP_THRESHOLD_']}"
        return _SETTING["now"]
    if n == AUTO:
        return "glibc default (auto: fixed 1 MiB threshold once a chunked text encoder is built)"
    if n == 0:
        return "glibc default (dynamic mmap threshold)"
    return _apply(int(n))


def auto_wants_fixed_threshold(classes: int, text_chunk: int, environ: dict[str, str] | None = None) -> bool:
    """The ``auto`` decision: no explicit setting in the environment and more classes than one text chunk."""
    if _requested(os.environ if environ is None else environ) != AUTO:
        return False
    return text_chunk > 0 and classes > text_chunk


def use_for_chunked_text(classes: int, text_chunk: int, environ: dict[str, str] | None = None) -> str | None:
    """``auto`` policy, called by the prompt methods when they build their model: when the learned
    prompts are encoded in more than one chunk (``classes > text_chunk > 0``), fix the threshold at
    1 MiB (the regime where the heap fragments: DualCoOp at 312 classes 0.71x the memory for 1.29x the
    step time; at 5,000 classes 3.75 GB instead of an OOM kill at 23 GB; docs/benchmarks.md). Image
    training is left alone: a fixed threshold doubles a ResNet-50 448 px CPU step. Returns the new
    setting's description, or None when nothing was changed (explicit setting, one chunk, no glibc)."""
    if not auto_wants_fixed_threshold(classes, text_chunk, environ) or _libc() is None:
        return None
    what = _apply(DEFAULT_MMAP_THRESHOLD)
    log.info("host allocator: %s (%d classes in chunks of %d; %s=off to keep glibc's default)", what, classes,
             text_chunk, ENV_VAR)
    return what
