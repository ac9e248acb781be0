"""The cluster part of taskloom-distributed."""
