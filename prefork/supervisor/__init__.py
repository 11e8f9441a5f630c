"""The master: forks workers and supervises them."""
