"""The runnable examples: one script per section of the seed notebook.

Run one with ``python examples/01_autograd_graph.py`` or all of them, with the
gallery page, with ``gradgraph demo``. Installed, they ship inside the package
as ``gradgraph/examples`` (a symlink to this folder in the repository), so
``gradgraph demo`` finds them without a checkout.
"""
