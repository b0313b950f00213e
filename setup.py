"""Installs tf_dsr (the library), with models/ and launch/ for the experiments."""

import setuptools

setuptools.setup(
    name='tf_dsr',
    version='0.1.0',
    description=('Dynamic Sparse Reparameterization (Mostafa & Wang, ICML 2019) '
                 'for Keras, on the tensorflow-model-optimization pruning API.'),
    packages=setuptools.find_packages(include=['tf_dsr', 'tf_dsr.*', 'models',
                                               'models.*', 'launch', 'launch.*']),
    python_requires='>=3.9',
    install_requires=[
        'tensorflow>=2.16,<2.22',
        'tf-keras>=2.16,<2.22',
        'tensorflow-model-optimization>=0.8,<0.9',
        'tensorflow-datasets>=4.9,<5',
        # tf.summary needs it; TensorFlow 2.21 no longer installs it.
        'tensorboard>=2.16,<2.22',
        'absl-py>=1.0',
        'numpy>=1.26',
        'scikit-learn>=1.3',
        'matplotlib>=3.7',
    ],
    extras_require={
        'test': ['pytest>=7', 'pytest-timeout>=2.1', 'pytest-xdist>=3.5',
                 'hypothesis>=6'],
    },
)
