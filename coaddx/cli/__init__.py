"""The ``coaddx`` command line.

=================  ==================================================================
module             holds
=================  ==================================================================
``main``           the parser and the dispatch (``coaddx`` entry point: :func:`main`)
``simulate``       ``coaddx simulate``
``warp``           ``coaddx warp`` (MakeDirectWarp)
``diff``           ``coaddx diff`` (ImagePsfMatch / SnapPsfMatch)
``assemble``       ``coaddx assemble`` (AssembleCoadd, CompareWarp)
``demo``           ``coaddx demo``, with ``quicklook`` (the PNG)
``export``         ``coaddx export-fits``
``precompile``     ``coaddx precompile`` (fills the kernel cache once after install)
``options``        flags generated from the config dataclasses (their defaults and choices)
``client``         the execution flags and the dask client they start; writing a coadd
``summary``        the one-screen summary, the progress bar, the memory rows
=================  ==================================================================
"""

from coaddx.cli.main import main

__all__ = ["main"]
