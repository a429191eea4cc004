"""The ingest process's ACLs: moved to streamhouse/acl_cache.py (the sql service uses them
too, and process folders do not import each other); these names stay importable from here."""

from streamhouse.acl_cache import REFRESH_S, AclCache, acl_cache

__all__ = ["REFRESH_S", "AclCache", "acl_cache"]
