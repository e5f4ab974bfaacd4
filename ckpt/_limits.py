"""Limits a reader enforces before it allocates, in one place (docs/FORMAT.md lists them).

They bound what a damaged or hostile file can make ckpt read, allocate or decompress.
"""

#: The newest pack format version this ckpt reads and writes (2 added BLAKE3 digests; a file whose
#: digests are all sha256 is still written as version 1, so older readers open it).
FORMAT_VERSION = 3  # 3 added members stored as shared objects (incremental saves)

#: Byte alignment of every member's data offset (and of array data inside .npy members).
ALIGNMENT = 64

#: Largest manifest member accepted, in bytes.
MAX_MANIFEST_BYTES = 64 * 1024 * 1024

#: Most JSON values (an upper bound counted before parsing: , : [ and { bytes) in any JSON member
#: (manifest, JSON slot, compressed-array header). Parsing costs up to ~50 bytes per value.
MAX_JSON_NODES = 4_000_000

#: JSON values always allowed; beyond them, a JSON member may hold one value per byte it occupies in
#: the file (a tiny deflated member cannot expand into millions of objects).
JSON_NODES_FREE = 65536

#: Largest ratio of uncompressed to compressed size accepted for a deflated JSON member (manifest or
#: JSON slot), beyond the first JSON_NODES_FREE bytes.
MAX_JSON_EXPANSION = 16

#: Largest chunk of a compressed (.ckz) array member (writers use 1 MiB).
MAX_CODEC_CHUNK_BYTES = 256 << 20

#: Most dependency entries one slot may record, the longest ``requires`` specifier, and its most clauses.
MAX_DEPENDENCIES = 64
MAX_REQUIRES_CHARS = 256
MAX_REQUIRES_CLAUSES = 16

#: Most members (zip entries) accepted in one file (keeps a hostile directory's parse under ~50 MB).
MAX_MEMBERS = 100_000

#: Longest member name accepted, in bytes (UTF-8).
MAX_NAME_BYTES = 4096

#: Longest .npy header accepted, in bytes (numpy's own default is 10000).
MAX_NPY_HEADER_BYTES = 64 * 1024

#: Most dimensions accepted in an array shape.
MAX_NDIM = 64

#: Most elements accepted in an array whose items take no bytes (``|V0``, empty structs): such an
#: array costs nothing to store, but anything that walks its elements would take forever.
MAX_EMPTY_ITEM_ELEMENTS = 1 << 24

#: Largest ratio of uncompressed to compressed size a deflated member may declare: deflate itself
#: cannot exceed ~1032:1, so a larger claim is a lie. What a member may inflate to is bounded by
#: its own declared size (and, for .npy members, by what their header declares).
MAX_DEFLATE_RATIO = 1040

#: Largest uncompressed size of any single member accepted (1 TiB).
MAX_MEMBER_BYTES = 1 << 40

#: Largest JSON slot accepted, in bytes.
MAX_JSON_BYTES = 256 * 1024 * 1024

#: Longest slot name accepted, in characters (escaped, at most 12 bytes each: a member prefix under 4 KiB).
MAX_SLOT_NAME = 256

#: Size of the chunks streamed while writing, hashing and copying members.
CHUNK_BYTES = 16 * 1024 * 1024
