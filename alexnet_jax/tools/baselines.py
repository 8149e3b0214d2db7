"""What the raw pixels alone get on the digits' test split: a 1-nearest-neighbour classifier and
logistic regression on the 8x8 images (0-255), fit on the train split the nets train on
(alexnet_jax/data/digits.py's split). A net's test error near these says the test set cannot
tell architectures apart; the report prints them beside every digits test-error table."""

import numpy as np

from alexnet_jax.data import digits


def digits_test_errors() -> dict:
    """{'1-NN (raw pixels)': error, 'logistic regression (raw pixels)': error} on the test split."""
    from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
    from sklearn.neighbors import KNeighborsClassifier  # pylint: disable=import-outside-toplevel
    images, labels = digits.load_sklearn()
    x = images.reshape(len(images), -1).astype(np.float64)
    split = digits.split_indices(labels)
    train, test = split['train'], split['test']
    models = {'1-NN (raw pixels)': KNeighborsClassifier(n_neighbors=1),
              'logistic regression (raw pixels)': LogisticRegression(max_iter=10_000)}
    return {name: float(np.mean(m.fit(x[train], labels[train]).predict(x[test]) != labels[test]))
            for name, m in models.items()}
