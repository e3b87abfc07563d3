"""HTTP layer: routes, dependencies, request bodies, error answers and the request middleware."""
