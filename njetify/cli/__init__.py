"""The ``njetify`` command line: ``convert``, ``finetune``, ``inspect``, ``bake``, ``models``, ``recipes``.

Every command is a thin layer over the Python API (``njetify.convert``, ``njetify.train.fit``,
``njetify.summary.summarize``, ``njetify.bake.bake``, ...). Entry point: :func:`main`.
"""

from .app import app, main

__all__ = ["app", "main"]
