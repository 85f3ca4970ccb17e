"""The engine and everything one run is made of: options, scheduling, results, errors."""
