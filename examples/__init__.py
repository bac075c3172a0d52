"""The runnable examples: one script per section of the seed notebook.

Run one with ``python examples/01_autograd_graph.py`` or all of them, with the
gallery page, with ``gradgraph demo``. Installed, they ship inside the package
as ``gradgraph/examples`` (a symlink to this folder in the repository), so
``gradgraph demo`` finds them without a checkout. ``simplenet.py`` (the
seed notebook's model) and ``tiny_models.py`` (tiny ``transformers`` configs,
shared with the tests, benchmarks and docs as ``gradgraph.examples.tiny_models``)
are what the scripts import beside gradgraph.
"""
