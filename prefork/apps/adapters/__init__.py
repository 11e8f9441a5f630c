"""Optional adapters that hand prefork's staged uploads to a framework (Flask, Django).

Each module imports its framework at the top, so importing one needs that
framework installed (``pip install prefork[flask]`` / ``prefork[django]``);
nothing else in prefork imports them, and prefork runs without either.
"""
