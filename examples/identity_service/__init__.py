"""A small identity service: creates users and emits ``user_created`` in the same transaction."""
