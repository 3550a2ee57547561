"""Test-suite settings: an unexpected error in njetify's per-site analysis raises here instead of
becoming a kept site (njetify.surgery.robust), so a bug cannot hide behind a report row."""

import os

os.environ.setdefault("NJETIFY_STRICT", "1")
