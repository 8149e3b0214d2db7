"""Tools around a training run (none of them is imported by it): the layer table, pretrained
weight conversion, evaluation, features, the paper's figures, and ablation sweeps."""
