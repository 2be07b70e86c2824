"""Fashion-MNIST sequence classifiers (bidirectional RNN and GRU) as a DVC pipeline."""

__version__ = "0.1.0"
