"""Request and response shapes of the API, by audience: ``customer`` (/api/v1/), ``operators`` and
``rollouts`` (/api/v1/admin/), and ``common`` (what both read). Output serializers never include BMC
credentials, token hashes or provisioning keys: fields are listed explicitly, never ``__all__``.

Import from the module that defines a shape; this package re-exports nothing."""
