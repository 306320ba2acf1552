"""Where pictures live: content-addressed blobs in a store, and who refers to them.

``blobs`` is the interface and its errors; ``local`` and ``s3`` implement it;
``stores`` picks one from ``CLIPGAN_STORAGE_URL``; ``refs`` keeps, in the database,
which jobs refer to which blob, so that a blob shared by several jobs is deleted only
when the last of them goes; ``keeper`` does both together; ``gc`` finds what nothing
refers to any more.
"""

__all__ = ["blobs", "gc", "keeper", "local", "refs", "s3", "stores"]
