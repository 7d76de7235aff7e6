"""elmjax: Evolution through Large Models, JAX-native.

Importing the package imports no JAX: sandbox workers and `elmjax exec` stay light.
"""

__version__ = "0.1.0"
