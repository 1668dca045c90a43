"""saescope: sparse autoencoders for every layer and sublayer of an open language model."""

from saescope.errors import SaescopeError
from saescope.release.formats import load

__all__ = ["SaescopeError", "load"]
__version__ = "0.1.0"
