"""ml_collections config factories for the example trainer; each module exposes `get_config()`."""
