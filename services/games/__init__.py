"""Games: the cached read side of the catalog for the API."""
