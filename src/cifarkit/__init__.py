"""cifarkit: from the official CIFAR files to a Kaggle submission and a build-vs-buy report."""

__version__ = "0.1.0"
