"""Loading: model and data specs, weights, model cards, model formats, datasets, preprocessing. Imports only the base layer."""
