"""The base layer: the project's error types, devices, opening a user's files, the model's state around a computation, and the batch-independence check. Imports no other group of core."""
