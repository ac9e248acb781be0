"""The scheduler part of taskloom-distributed."""
