"""The standard workloads and the runner behind ``taskloom bench``."""
