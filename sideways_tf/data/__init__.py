"""sideways_tf data."""
