"""The small interface every runtime backend implements (Polygraphy-style runners)."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

import numpy as np


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of a graph or engine, as the backend loaded it.

    Attributes:
        name: the tensor's name.
        dtype: its NumPy dtype name (``uint8``, ``float32``, ...).
        shape: its dimensions, None where one is symbolic (dynamic).
        is_input: an input (else an output).
    """

    name: str
    dtype: str
    shape: tuple[int | None, ...]
    is_input: bool


class Backend(abc.ABC):
    """Runs one ONNX graph (or the engine built from it) on one device.

    A backend is created ready to run; ``close()`` releases it and is
    idempotent. Tensors are addressed by name.
    """

    name: str = "backend"

    @property
    @abc.abstractmethod
    def input_names(self) -> Sequence[str]:
        """Names of the graph's inputs."""

    @property
    @abc.abstractmethod
    def output_names(self) -> Sequence[str]:
        """Names of the graph's outputs."""

    @abc.abstractmethod
    def infer(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Runs the graph on host arrays and returns the requested outputs (all by default)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Releases the backend's resources; calling it again does nothing."""

    def tensors(self) -> dict[str, TensorInfo]:
        """Every input and output as loaded (empty where a backend cannot tell)."""
        return {}

    @property
    def metadata(self) -> dict[str, str]:
        """The graph's metadata properties (``edgeseg.num_classes``, ...), where the backend keeps them."""
        return {}

    def end_profiling(self) -> str | None:
        """Stops per-layer profiling and returns the profile file, where the backend has one."""
        return None

    @property
    def description(self) -> str:
        """A short human-readable description (device, provider)."""
        return self.name

    def __enter__(self) -> Backend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
