"""The passes of the conversion pipeline, one per file (see :mod:`njetify.surgery.pipeline`)."""
