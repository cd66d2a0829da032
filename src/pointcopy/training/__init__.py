"""Training: data set over v1g records, the Trainer subclass with point-and-copy metrics, the `train` entry."""
