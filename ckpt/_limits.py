"""Limits a reader enforces before it allocates, in one place (docs/FORMAT.md lists them).

They bound what a damaged or hostile file can make ckpt read, allocate or decompress.
"""

#: The newest pack format version this ckpt reads and writes (2 added BLAKE3 digests; a file whose
#: digests are all sha256 is still written as version 1, so older readers open it).
FORMAT_VERSION = 2

#: Byte alignment of every member's data offset (and of array data inside .npy members).
ALIGNMENT = 64

#: Largest manifest member accepted, in bytes.
MAX_MANIFEST_BYTES = 64 * 1024 * 1024

#: Most JSON objects and arrays in a manifest (bounds the memory parsing takes: ~100 bytes each).
MAX_MANIFEST_CONTAINERS = 1_000_000

#: Most members (zip entries) accepted in one file (keeps a hostile directory's parse under ~50 MB).
MAX_MEMBERS = 100_000

#: Longest member name accepted, in bytes (UTF-8).
MAX_NAME_BYTES = 4096

#: Longest .npy header accepted, in bytes (numpy's own default is 10000).
MAX_NPY_HEADER_BYTES = 64 * 1024

#: Most dimensions accepted in an array shape.
MAX_NDIM = 64

#: Largest ratio of uncompressed to compressed size accepted for a deflated member.
MAX_COMPRESSION_RATIO = 1024

#: Largest uncompressed size of any single member accepted (1 TiB).
MAX_MEMBER_BYTES = 1 << 40

#: Largest JSON slot accepted, in bytes.
MAX_JSON_BYTES = 256 * 1024 * 1024

#: Longest slot name accepted.
MAX_SLOT_NAME = 128

#: Size of the chunks streamed while writing, hashing and copying members.
CHUNK_BYTES = 16 * 1024 * 1024
