"""The config file, its values, the settings derived from them, and the logs."""
