"""The ``outbox`` command line: composes the packages at the top and imports each lazily."""
