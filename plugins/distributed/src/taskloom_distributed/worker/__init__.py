"""The worker part of taskloom-distributed."""
