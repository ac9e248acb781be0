"""Nothing to set up: the sync scheduler keeps no state between computes."""
