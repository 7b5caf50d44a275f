# Files pytest must not import while collecting doctests.
collect_ignore = [
    "party_server/wsgi.py",
    "party_server/__main__.py",
    "benchmarks",
    "notebooks",
    "docs",
]
