"""Experiment launcher: named config -> strategy -> data -> model -> sparsify -> fit -> export.

`python -m launch.train --config=NAME` runs one named experiment (see
`launch.configs`); `python -m launch.quickstart` compares dense, static sparse
and DSR training on scikit-learn's digits in a few minutes on a CPU.

Importing this package (and `launch.configs`) does not import TensorFlow.
"""
