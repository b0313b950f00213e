"""Experiment launcher: named config -> strategy -> data -> model -> sparsify -> fit -> export.

`python -m launch.train --config=NAME` runs one named experiment (see
`launch.configs`); `python -m launch.quickstart` compares dense, static sparse
and DSR training (DSR also in Keras 3) on scikit-learn's digits in a few
minutes on a CPU.

Importing this package does not import TensorFlow. Every entry point imports
`launch.quiet` first, which keeps TensorFlow's removable start-up log out.
"""
