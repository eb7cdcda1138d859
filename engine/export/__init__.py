"""A run's weights out of the run directory: the adapter as it is, or merged into the base model. Heavy: own process."""
