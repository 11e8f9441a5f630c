"""Framework adapters: Flask and Django take prefork's staged form parts as their uploads.

Each is one line of setup in the application and imports its framework only
when used (``pip install -e '.[flask]'`` / ``'.[django]'``).
"""
