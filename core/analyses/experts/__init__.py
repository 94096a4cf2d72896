"""Expert sweeps: the α × β masks through g (`sweep`), when a mask counts as an expert (`criterion`), and the honest test of the best one (`evidence`)."""
