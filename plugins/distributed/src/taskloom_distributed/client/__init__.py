"""The client part of taskloom-distributed."""
