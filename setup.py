"""Build hook for the optional native LZW accelerator (everything else is in pyproject.toml).

``gossip.wire._lzw`` (gossip/wire/_lzw.c) is byte-identical with the pure-Python codec in
gossip/wire/lzw.py, which is used when the extension is missing: ``optional=True`` lets an
install without a C compiler or Python headers succeed. Kept in setup.py rather than
``[tool.setuptools] ext-modules`` because that table needs setuptools >= 74.1 and is
still marked experimental there.
"""

from __future__ import annotations

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "gossip.wire._lzw",
            sources=["gossip/wire/_lzw.c"],
            optional=True,
        )
    ]
)
