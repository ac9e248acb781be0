"""Build taskloom-sync's optional compiled fast path (``taskloom_sync._fast``); metadata is in pyproject.toml.

The extension is optional: where it cannot be built (no C compiler, or Cython missing under
``--no-build-isolation``) the package installs without it and the ``sync`` scheduler runs its
pure-Python path.  setuptools compiles the ``.pyx`` source with Cython (a build requirement)
itself, so the source distribution carries the ``.pyx``.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("taskloom_sync._fast", ["src/taskloom_sync/_fast.pyx"], optional=True)])
