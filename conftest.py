# Files pytest must not import while collecting doctests.
collect_ignore = [
    "party_server/wsgi.py",
    "party_server/gunicorn_config.py",  # patches gunicorn when imported; needs gunicorn
    "party_server/__main__.py",
    "benchmarks",
    "notebooks",
    "docs",
]
