"""Portal views: thin, each query scoped with ``for_user``, each change made by a service."""
