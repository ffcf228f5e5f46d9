"""Typed exceptions of edgeseg.

Every error names what it is about (a file, a tensor, a frame, an option) and
says what was expected. Only the CLI maps them to exit codes.
"""

from __future__ import annotations


class EdgesegError(Exception):
    """Base class of every error edgeseg raises on purpose."""


class ConfigError(EdgesegError, ValueError):
    """An argument or option has a wrong value, type or name."""


class UnknownModelError(ConfigError, KeyError):
    """A model name that the zoo does not know."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WeightsError(EdgesegError):
    """A weights file that cannot be read or does not fit the model."""


class ExportError(EdgesegError):
    """torch -> ONNX export or the checks after it failed."""


class ParityError(EdgesegError):
    """The exported graph does not match the PyTorch model closely enough."""


class BundleError(EdgesegError):
    """A bundle is missing, incomplete, altered or of an unknown schema."""


class BundleExistsError(BundleError, FileExistsError):
    """The output bundle exists and replacing it was not asked for."""


class BackendError(EdgesegError):
    """A runtime backend is unavailable or failed to run a graph."""


class MissingDependencyError(EdgesegError, ImportError):
    """An optional dependency is not installed; the message names the pip extra."""


class InputError(EdgesegError, ValueError):
    """A frame or image handed to the runtime is not usable."""


class SourceError(EdgesegError):
    """A frame source (file, folder, video, camera) cannot be opened or read."""
