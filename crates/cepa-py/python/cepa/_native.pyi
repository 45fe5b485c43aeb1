"""Type stubs of the extension module (the Rust side of the package)."""

from typing import List, Optional, Sequence, Tuple

__version__: str

class CepaError(Exception):
    """An error cepa reports: the message is the ``cepa`` command's one line."""

_Trigger = Tuple[List[float], Optional[List[float]], Tuple[int, int, int]]

def run_cli(argv: Sequence[str]) -> int:
    """Run the ``cepa`` command line (``argv[0]`` is the program name); return its exit code."""

def scan(model: str, options: str, pixels: Optional[bytes] = ...) -> Tuple[str, Optional[_Trigger]]:
    """The scan report as JSON, and the trigger when stage 2 ran."""

def invert(model: str, options: str, pixels: Optional[bytes] = ...) -> Tuple[str, _Trigger]:
    """The inversion report as JSON, and the trigger."""

def inspect(model: str, options: str, pixels: Optional[bytes] = ...) -> str:
    """The inspection report as JSON."""

def load_images(path: str, split: str = ...) -> Tuple[bytes, List[int], Tuple[int, int, int, int], int]:
    """Float32 little-endian CHW pixels, labels, (N, C, H, W), the number of classes."""
