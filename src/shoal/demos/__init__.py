"""Demo programs behind the ``shoal`` command; not part of the library's API.

* ``wordstats``: the job ``shoal run`` runs with no arguments (word statistics
  of an embedded text).
* ``workbook``: the parallel-batch workbook behind ``shoal compare N``,
  ``shoal parallel N`` and ``shoal benchmark``, written as KayGraph-style
  graphs with ``shoal.graph``.

They use only shoal's public API, as any program built on shoal would.
"""
