"""Where the iterative solvers run: numpy on the CPU, or a CUDA GPU through PyTorch or CuPy.

TFI, TV and iSMV are written once, against an array namespace ``xp`` (the
Python array API standard) and the few helpers here, which pick the library
from the arrays they are given:

- numpy arrays (the default, ``device="cpu"``): ``xp`` is numpy itself, FFTs
  are :mod:`QSMLib._fft` (scipy with the configured threads) and
  :func:`into` writes into preallocated arrays with numpy's ``out=``, so
  the results and the speed are those of plain numpy code;
- GPU arrays (``device="cuda"``): ``xp`` is PyTorch's or CuPy's namespace as
  array-api-compat presents it, FFTs are the library's own, and :func:`into`
  assigns (the libraries' memory pools make the temporaries cheap).

A solver moves its inputs to the device once when it starts
(:meth:`Device.to_device`) and its result back once at the end
(:meth:`Device.to_numpy`); everything stays float32. CPU-only installs never
import torch, cupy or array_api_compat: they are imported only when a GPU is
asked for (:func:`resolve_device`) or when the arrays come from a library
other than numpy.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from . import _fft
from .errors import QSMInputError

#: Values of ``--device`` and of the configuration's ``device``.
DEVICES = ("cpu", "cuda", "auto")
#: What to install for the GPU path (said in every error about it).
GPU_INSTALL = ('pip install "qsmlib[gpu]" (array-api-compat), plus PyTorch with CUDA (https://pytorch.org) or '
               "CuPy for your CUDA version (e.g. pip install cupy-cuda12x)")


@dataclass(frozen=True)
class Device:
    """A place the solvers run: its name, a description for provenance, and the transfers to and from it.

    Attributes
    ----------
    name : str
        ``"cpu"`` or ``"cuda"``.
    description : str
        Library and hardware, e.g. ``"cuda: NVIDIA H200, PyTorch 2.5.1"``.
    to_device : callable
        numpy array -> array on the device (same dtype).
    to_numpy : callable
        Array on the device -> numpy array.
    """

    name: str
    description: str
    to_device: Callable[[np.ndarray], Any]
    to_numpy: Callable[[Any], np.ndarray]


def _identity(volume: Any) -> Any:
    return volume


#: numpy on the CPU: transfers are no-ops.
CPU = Device("cpu", "cpu: numpy", _identity, _identity)


def array_api_device(xp: Any, name: str, description: str, device: Any = None,
                     to_numpy: Optional[Callable[[Any], np.ndarray]] = None) -> Device:
    """A :class:`Device` for an array API namespace ``xp`` (arrays created on its ``device``).

    ``to_numpy`` defaults to :func:`numpy.asarray` (host memory only); the GPU libraries
    pass their own copy to the host. With ``array_api_strict`` this runs
    the device code path on the CPU, which is how the tests check it without
    a GPU.

    Examples
    --------
    >>> import array_api_strict
    >>> strict = array_api_device(array_api_strict, "cpu", "array-api-strict")
    >>> float(strict.to_numpy(strict.to_device(np.ones(3, np.float32))).sum())
    3.0
    """
    def upload(volume: np.ndarray) -> Any:
        return xp.asarray(volume) if device is None else xp.asarray(volume, device=device)

    return Device(name, description, upload, to_numpy or np.asarray)


def resolve_device(device: Union[str, Device]) -> Device:
    """The :class:`Device` for ``"cpu"``, ``"cuda"`` or ``"auto"`` (a :class:`Device` is returned as it is).

    ``"auto"`` is the GPU when PyTorch or CuPy is installed and sees one, and
    the CPU otherwise, silently. ``"cuda"`` without such a library or GPU,
    and either GPU choice without array-api-compat, raise
    :class:`QSMInputError` saying what to install.

    Examples
    --------
    >>> resolve_device("cpu").description
    'cpu: numpy'
    """
    if isinstance(device, Device):
        return device
    if check_device(device) == "cpu":
        return CPU
    found, reason = _gpu()
    if found is not None:
        return found
    if device == "auto":
        return CPU
    raise QSMInputError(f"device 'cuda' was asked for, but {reason}. Install {GPU_INSTALL}, or use --device cpu.")


def check_device(name: object) -> str:
    """``name`` if it is one of :data:`DEVICES`, else :class:`QSMInputError`."""
    if not isinstance(name, str) or name not in DEVICES:
        raise QSMInputError(f"device must be one of {', '.join(DEVICES)}, got {name!r}.")
    return name


@functools.cache
def _gpu() -> tuple[Optional[Device], str]:
    """The first CUDA GPU that PyTorch or CuPy sees (in that order), or None and why there is none."""
    reasons = []
    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            return array_api_device(
                _compat("torch"), "cuda", f"cuda: {torch.cuda.get_device_name(0)}, PyTorch {torch.__version__}",
                torch.device("cuda"), lambda array: array.detach().cpu().numpy()), ""
        reasons.append(f"PyTorch {torch.__version__} sees no CUDA GPU")
    if importlib.util.find_spec("cupy") is not None:
        try:
            import cupy

            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as error:  # CuPy raises its own CUDA errors when no driver or GPU is there
            reasons.append(f"CuPy cannot reach a CUDA GPU ({error})")
        else:
            if count:
                name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
                name = name.decode() if isinstance(name, bytes) else str(name)
                return array_api_device(_compat("cupy"), "cuda", f"cuda: {name}, CuPy {cupy.__version__}",
                                        to_numpy=lambda array: array.get()), ""
            reasons.append("CuPy sees no CUDA GPU")
    return None, "; ".join(reasons) or "neither PyTorch nor CuPy is installed"


def _compat(library: str) -> Any:
    """array-api-compat's namespace for ``library`` (a submodule: importing the package alone does not load it)."""
    try:
        import array_api_compat  # noqa: F401  (only to tell a missing package from a failing submodule)
    except ImportError:
        raise QSMInputError(f"A CUDA GPU is there, but array-api-compat is not installed. Install {GPU_INSTALL}, "
                            "or use --device cpu.") from None
    return importlib.import_module(f"array_api_compat.{library}")


def namespace(array: Any) -> Any:
    """numpy for numpy arrays (array-api-compat is not imported), else the array's array API namespace."""
    if isinstance(array, np.ndarray):
        return np
    from array_api_compat import array_namespace

    return array_namespace(array)


def scalar(like: Any, value: float) -> Any:
    """``value`` in ``like``'s dtype: a numpy scalar, or a 0-D array on ``like``'s device.

    Array API functions (unlike operators) need not take Python numbers in
    the versions of the standard the GPU libraries follow.
    """
    if isinstance(like, np.ndarray):
        return like.dtype.type(value)
    from array_api_compat import device

    return namespace(like).asarray(value, dtype=like.dtype, device=device(like))


def into(out: Any, name: str, *operands: Any, index: Any = Ellipsis) -> Any:
    """``out[index] = xp.name(*operands)``: numpy writes with ``out=`` (no temporary); returns ``out``.

    ``name`` is an element-wise function that numpy and the array API
    standard share (``"subtract"``, ``"multiply"``, ``"divide"``,
    ``"sqrt"``, ``"maximum"``...); Python numbers among ``operands`` are
    taken in ``out``'s dtype.

    Examples
    --------
    >>> work = np.empty(3, np.float32)
    >>> into(work, "maximum", np.array([-1.0, 0.5, 2.0], np.float32), 0.0)
    array([0. , 0.5, 2. ], dtype=float32)
    """
    operands = tuple(scalar(out, x) if isinstance(x, (int, float)) else x for x in operands)
    if isinstance(out, np.ndarray):
        getattr(np, name)(*operands, out=out[index])
    else:
        out[index] = getattr(namespace(out), name)(*operands)
    return out


def float32_array(like: Any, shape: Sequence[int], zeros: bool = False) -> Any:
    """A new float32 array of ``shape`` in ``like``'s library and device, uninitialised or zeros."""
    if isinstance(like, np.ndarray):
        return (np.zeros if zeros else np.empty)(tuple(shape), np.float32)
    from array_api_compat import device

    xp = namespace(like)
    return (xp.zeros if zeros else xp.empty)(tuple(shape), dtype=xp.float32, device=device(like))


def copy(array: Any, dtype: Any = None) -> Any:
    """A copy of ``array`` in its own library (as ``dtype`` when given)."""
    dtype = array.dtype if dtype is None else dtype
    if isinstance(array, np.ndarray):
        return array.astype(dtype, copy=True)
    return namespace(array).astype(array, dtype, copy=True)


def rfftn(volume: Any) -> Any:
    """3D real FFT of the last three axes (numpy: :func:`QSMLib._fft.rfftn`, threaded scipy)."""
    if isinstance(volume, np.ndarray):
        return _fft.rfftn(volume)
    return namespace(volume).fft.rfftn(volume, axes=(-3, -2, -1))


def irfftn(spectrum: Any, shape: Sequence[int]) -> Any:
    """Inverse of :func:`rfftn` for a real volume of spatial ``shape``, float32."""
    if isinstance(spectrum, np.ndarray):
        return _fft.irfftn(spectrum, shape).astype(np.float32, copy=False)
    return namespace(spectrum).fft.irfftn(spectrum, s=tuple(shape), axes=(-3, -2, -1))


def norm(array: Any) -> float:
    """Euclidean norm of all elements, as a Python float (numpy: the same bits whatever the threads)."""
    if isinstance(array, np.ndarray):
        return math.sqrt(dot(array, array))
    xp = namespace(array)
    return float(xp.linalg.vector_norm(array))


def dot(first: Any, second: Any) -> float:
    """Dot product of all elements (real part for numpy's complex arrays), as a Python float.

    numpy arrays are summed by ``einsum``'s own loop, not BLAS: BLAS splits a
    long sum among its threads on some processors, so its last bits, and with
    them a solver's stopping decision, would follow the thread count, and a
    cohort's outputs would depend on how many threads each task got.
    """
    if isinstance(first, np.ndarray):
        return float(np.einsum("i,i->", _real_elements(first), _real_elements(second)))
    xp = namespace(first)
    return float(xp.vecdot(xp.reshape(first, (-1,)), xp.reshape(second, (-1,))))


def _real_elements(array: np.ndarray) -> np.ndarray:
    """All elements as one real vector (a complex number as its real and imaginary parts)."""
    flat = np.ascontiguousarray(array).reshape(-1)
    return flat.view(flat.real.dtype) if np.iscomplexobj(flat) else flat


